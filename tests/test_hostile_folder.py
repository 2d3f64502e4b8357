"""A plugin folder is copied whole or refused, never silently trimmed; its symbolic links are confined.

Unreadable entries and special files (FIFO, socket, device) are errors naming them. A link is followed (its
target stored as a regular file, and a note says so) when the target stays inside the plugin folder or the git
repository holding it, outside hidden folders; any other link is refused unless ``--follow-symlinks``; loops
and dangling links are errors. All refusals: exit 3, one line naming the entry, nothing in -o or TMPDIR.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin
from dify_repack.errors import ExitCode, PackageError
from dify_repack.package import copy_plugin_dir
from hostile import assert_refused, isolated_tmp, leftovers, run

SECRET = "-----BEGIN OPENSSH PRIVATE KEY-----\nnot really\n"


@pytest.fixture
def plugin(tmp_path: Path) -> Path:
    return make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})


@pytest.fixture
def home_secret(tmp_path: Path) -> Path:
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text(SECRET)
    return secret


def _pack_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plugin: Path, *named: str
) -> str:
    out = tmp_path / "out"
    with isolated_tmp(tmp_path / "tmp", monkeypatch):
        outcome = run(
            capsys, "pack", plugin, "--no-verify", "-o", out, "--index-url", "http://127.0.0.1:9/simple",
            "--cache-dir", tmp_path / "cache",
        )  # fmt: skip
    assert_refused(outcome, ExitCode.BAD_PACKAGE, plugin, *named)
    assert leftovers(out) == [] and leftovers(tmp_path / "cache") == []
    return outcome.err


def _entries(package: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(package) as archive:
        return {info.filename: archive.read(info) for info in archive.infolist()}


def _pack_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str], plugin: Path, index: LocalIndex, *extra: str) -> dict:
    outcome = run(
        capsys, "pack", plugin, "--no-verify", "--json", "-o", tmp_path / "out", "--index-url", index.url,
        "--cache-dir", tmp_path / "cache", *extra,
    )  # fmt: skip
    assert outcome.code == 0, outcome.err
    result: dict = json.loads(outcome.out)["results"][0]
    return result


# --- special and unreadable entries ------------------------------------------------------------------------


def test_fifo_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plugin: Path
) -> None:
    os.mkfifo(plugin / "pipe")
    err = _pack_refused(tmp_path, monkeypatch, capsys, plugin, "pipe", "FIFO")
    assert "tip:" in err


def test_socket_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plugin: Path
) -> None:
    with socket.socket(socket.AF_UNIX) as server:
        server.bind(str(plugin / "agent.sock"))
        _pack_refused(tmp_path, monkeypatch, capsys, plugin, "agent.sock", "socket")


def test_device_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plugin: Path
) -> None:
    try:
        os.mknod(plugin / "null", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except PermissionError:
        pytest.skip("creating a device node needs root (CAP_MKNOD)")
    _pack_refused(tmp_path, monkeypatch, capsys, plugin, "null", "device")


@pytest.fixture
def unreadable(monkeypatch: pytest.MonkeyPatch) -> Iterator[set[str]]:
    """Names that cannot be opened or listed: permission bits do not stop root, who runs this suite."""
    names: set[str] = set()
    real_open, real_scandir = Path.open, os.scandir

    def fake_open(self: Path, *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if self.name in names:
            raise PermissionError(errno.EACCES, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)  # type: ignore[arg-type]

    def fake_scandir(path: object = ".") -> object:
        if Path(str(path)).name in names:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(Path, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    yield names


def test_unreadable_file_is_refused_not_skipped(tmp_path: Path, plugin: Path, unreadable: set[str]) -> None:
    (plugin / "secret.txt").write_text("x")
    unreadable.add("secret.txt")
    with pytest.raises(PackageError, match=r"plugin/secret.txt: cannot read it \(Permission denied\)"):
        copy_plugin_dir(plugin, tmp_path / "copy")


def test_unreadable_subfolder_is_refused_not_skipped(tmp_path: Path, plugin: Path, unreadable: set[str]) -> None:
    (plugin / "private").mkdir()
    (plugin / "private" / "data.txt").write_text("x")
    unreadable.add("private")
    with pytest.raises(PackageError, match=r"plugin/private/: cannot read this folder"):
        copy_plugin_dir(plugin, tmp_path / "copy")


def test_ignored_special_files_do_not_matter(tmp_path: Path, plugin: Path) -> None:
    os.mkfifo(plugin / "pipe")
    (plugin / ".difyignore").write_text("pipe\n")
    copy_plugin_dir(plugin, tmp_path / "copy")
    assert not (tmp_path / "copy" / "pipe").exists()


# --- symbolic links ----------------------------------------------------------------------------------------


def test_links_inside_the_plugin_are_stored_as_files(tmp_path: Path, plugin: Path) -> None:
    (plugin / "docs").mkdir()
    (plugin / "docs" / "readme.md").write_text("# Demo\n")
    (plugin / "README.md").symlink_to("docs/readme.md")
    (plugin / "shared").symlink_to("provider", target_is_directory=True)
    copy = tmp_path / "copy"
    notes = copy_plugin_dir(plugin, copy)
    assert not (copy / "README.md").is_symlink() and (copy / "README.md").read_text() == "# Demo\n"
    assert not (copy / "shared").is_symlink() and (copy / "shared" / "demo.yaml").is_file()
    assert notes == [
        "followed symbolic link README.md -> docs/readme.md (stored as a file)",
        "followed symbolic link shared -> provider (folder stored as files)",
    ]


def test_link_to_the_repository_ignore_file_works_like_gemini(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], index: LocalIndex
) -> None:
    # The official repository: models/gemini/.difyignore -> ../../.difyignore
    repo = tmp_path / "dify-official-plugins"
    (repo / ".git").mkdir(parents=True)
    (repo / ".difyignore").write_text("tests/\n*.log\n")
    gemini = make_plugin(repo / "models" / "gemini", {"requirements.txt": "dify_plugin==0.7.4\n", "debug.log": "x"})
    (gemini / ".difyignore").symlink_to("../../.difyignore")
    result = _pack_ok(tmp_path, capsys, gemini, index)
    entries = _entries(Path(result["output"]))
    assert entries[".difyignore"].startswith(b"tests/\n*.log\n")
    assert "debug.log" not in entries  # the rules of the linked file applied
    assert "followed symbolic link .difyignore -> ../../.difyignore (stored as a file)" in result["notes"]


def test_link_outside_is_refused_with_a_tip(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], plugin: Path, home_secret: Path
) -> None:
    (plugin / "notes.txt").symlink_to(home_secret)
    err = _pack_refused(tmp_path, monkeypatch, capsys, plugin, "notes.txt", "outside the plugin folder")
    assert "--follow-symlinks" in err and SECRET not in err


def test_link_to_a_folder_outside_is_refused(tmp_path: Path, plugin: Path, home_secret: Path) -> None:
    (plugin / "ssh").symlink_to(home_secret.parent, target_is_directory=True)
    with pytest.raises(PackageError, match=r"ssh: symbolic link to .*outside"):
        copy_plugin_dir(plugin, tmp_path / "copy")
    assert not (tmp_path / "copy" / "ssh" / "id_rsa").exists()


def test_hidden_folders_of_the_repository_are_outside_too(tmp_path: Path) -> None:
    # A home folder under git (dotfiles) must not make ~/.ssh a valid target.
    home = tmp_path / "home"
    (home / ".git").mkdir(parents=True)
    (home / ".ssh").mkdir()
    (home / ".ssh" / "id_rsa").write_text(SECRET)
    plugin = make_plugin(home / "src" / "plugin", {})
    (plugin / "notes.txt").symlink_to("../../.ssh/id_rsa")
    with pytest.raises(PackageError, match=r"notes\.txt: symbolic link to .*refusing"):
        copy_plugin_dir(plugin, tmp_path / "copy")


def test_follow_symlinks_opts_in_to_every_link(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], plugin: Path, home_secret: Path, index: LocalIndex
) -> None:
    shared = tmp_path / "shared-assets"
    shared.mkdir()
    (shared / "logo.svg").write_text("<svg/>")
    (plugin / "logo.svg").symlink_to(shared / "logo.svg")
    result = _pack_ok(tmp_path, capsys, plugin, index, "--follow-symlinks")
    assert _entries(Path(result["output"]))["logo.svg"] == b"<svg/>"
    assert any(note.startswith("followed symbolic link logo.svg -> ") for note in result["notes"])


def test_ignored_links_are_not_followed(tmp_path: Path, plugin: Path, home_secret: Path) -> None:
    (plugin / "notes.txt").symlink_to(home_secret)
    (plugin / ".difyignore").write_text("notes.txt\n")
    assert copy_plugin_dir(plugin, tmp_path / "copy") == []
    assert not (tmp_path / "copy" / "notes.txt").exists()


@pytest.mark.parametrize(
    ("links", "expected"),
    [
        ({"a": "b", "b": "a"}, "a: symbolic link loop"),
        ({"self": "self"}, "self: symbolic link loop"),
        ({"provider/up": ".."}, "symbolic link loop"),
        ({"gone": "missing.txt"}, "gone: symbolic link to a missing file"),
    ],
    ids=["two-file-loop", "self-loop", "folder-loop", "dangling"],
)
def test_loops_and_dangling_links_are_errors(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    plugin: Path,
    links: dict[str, str],
    expected: str,
) -> None:
    for name, target in links.items():
        (plugin / name).symlink_to(target)
    _pack_refused(tmp_path, monkeypatch, capsys, plugin, expected)


def test_link_to_a_fifo_is_refused(tmp_path: Path, plugin: Path) -> None:
    os.mkfifo(plugin / "pipe")
    (plugin / ".difyignore").write_text("pipe\n")
    (plugin / "data").symlink_to("pipe")
    with pytest.raises(PackageError, match="data: is a FIFO"):
        copy_plugin_dir(plugin, tmp_path / "copy")


def test_an_ignore_file_linked_to_something_huge_is_refused(tmp_path: Path, plugin: Path) -> None:
    big = plugin / "big.txt"
    big.write_bytes(b"#" * (2 * 1024 * 1024))
    (plugin / ".difyignore").symlink_to("big.txt")
    with pytest.raises(PackageError, match=r"\.difyignore: larger than"):
        copy_plugin_dir(plugin, tmp_path / "copy")

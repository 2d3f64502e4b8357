"""Faults of the machine and the network: full or read-only folders are found before any download, every HTTP
fault is a network error (exit 6), a server that trickles is cut off, and -v shows the commands run rather than
the HTTP library's debug."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin
from dify_repack import http
from dify_repack.cli import main
from dify_repack.errors import EnvironmentProblem, NetworkError
from dify_repack.http import Pace, download, make_client
from fakeweb import Reply, serve

needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare -m for a private tmpfs"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "DIFY_", "PYTHON"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "TMPDIR": str(tmp_path / "tmp"), **extra}


# Runs "$@" with a fresh tmpfs (options "$1") on "$2", private to that process tree, then lists what is left there.
_ON_TMPFS = (
    'mount -t tmpfs -o "$1" tmpfs "$2" || exit 99; dir="$2"; shift 2; "$@"; code=$?; '
    'echo "left: $(ls -A "$dir" | tr "\\n" " ")" >&2; exit $code'
)


def _on_tmpfs(folder: Path, options: str, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = ["unshare", "-m", "--propagation", "private", "sh", "-c", _ON_TMPFS, "sh", options, str(folder), *argv]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, check=False)


def _left_on_tmpfs(result: subprocess.CompletedProcess[str]) -> list[str]:
    line = next(line for line in result.stderr.splitlines() if line.startswith("left:"))
    return line.removeprefix("left:").split()


def _pack_with_mount(
    tmp_path: Path, index: LocalIndex, folder: str, mount_options: str
) -> subprocess.CompletedProcess[str]:
    """Run pack with ``folder`` (out, cache or tmp below ``tmp_path``) on a tmpfs private to that run."""
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    for name in ("out", "cache", "tmp"):
        (tmp_path / name).mkdir()
    pack = [sys.executable, "-m", "dify_repack", "pack", str(plugin), "--no-verify", "--index-url", index.url]
    pack += ["-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    return _on_tmpfs(tmp_path / folder, mount_options, pack, _env(tmp_path))


@needs_mounts
@pytest.mark.parametrize("folder", ["out", "cache", "tmp"])
@pytest.mark.parametrize(
    ("mount_options", "says"),
    [("ro", "Read-only file system"), ("size=1m", "MiB free")],
    ids=["read-only", "full"],
)
def test_an_unusable_folder_is_found_before_any_download(
    tmp_path: Path, index: LocalIndex, folder: str, mount_options: str, says: str
) -> None:
    asked = len(index.requests)
    result = _pack_with_mount(tmp_path, index, folder, mount_options)
    assert result.returncode == 9, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / folder) in errors[0] and says in errors[0], result.stderr
    assert "tip:" in result.stderr and "Traceback" not in result.stderr
    assert index.requests[asked:] == []  # not even the resolution asked the index
    assert _left_on_tmpfs(result) == []  # not even a probe file
    assert not list((tmp_path / "out").iterdir())


@needs_mounts
def test_a_disk_that_fills_during_a_download_is_exit_9_naming_the_folder(tmp_path: Path) -> None:
    """ENOSPC in the middle of a download: the folder is named and the partial file removed."""
    full = tmp_path / "small"
    full.mkdir()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dify_repack.errors import EnvironmentProblem\n"
        "from dify_repack.http import download, make_client\n"
        "try:\n"
        "    with make_client() as client:\n"
        f"        download(client, sys.argv[1], Path({str(full)!r}) / 'big.whl')\n"
        "except EnvironmentProblem as error:\n"
        "    print(error.message)\n"
    )
    with serve() as web:
        web.route("/big.whl", Reply(body=b"x" * (2 * 1024 * 1024)))
        result = _on_tmpfs(full, "size=256k", [sys.executable, "-c", code, web.url + "/big.whl"], _env(tmp_path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{full}: cannot write there: No space left on device"
    assert _left_on_tmpfs(result) == []


def test_cannot_write_says_what_is_wrong_and_where_to_go() -> None:
    full = EnvironmentProblem.cannot_write(Path("/c"), OSError(errno.ENOSPC, "No space left on device"))
    assert full.message == "/c: cannot write there: No space left on device" and "free some space" in str(full.tip)
    denied = EnvironmentProblem.cannot_write(Path("/o"), PermissionError(errno.EACCES, "Permission denied"))
    assert "writable" in str(denied.tip) and "-o" in str(denied.tip)
    assert EnvironmentProblem.cannot_write(None, OSError(errno.EROFS, "Read-only")).exit_code == 9


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ("loop", "too many redirects"),
        ("ftp", "not http or https"),
        ("no-location", "HTTP 302, a redirect without a Location"),
    ],
)
def test_http_faults_are_network_errors(tmp_path: Path, reply: str, says: str) -> None:
    with serve() as web:
        web.redirect("/loop", "/loop")
        web.redirect("/ftp", "ftp://files.invalid/plugin.difypkg")
        web.route("/no-location", Reply(302))
        with make_client() as client, pytest.raises(NetworkError, match=says):
            download(client, f"{web.url}/{reply}", tmp_path / "file", backoff=0.01)
    assert list(tmp_path.iterdir()) == []


# The download bound, shortened: after 1 s, at least 4 KiB/s on average (the default: 120 s, 1 KiB/s).
SHORT_PACE = Pace(grace=1.0, min_rate=4096)


def test_a_server_that_trickles_is_cut_off_after_the_grace_period(tmp_path: Path) -> None:
    # Each byte comes well within any read timeout, so only an overall bound ends this download.
    with serve() as web:
        web.route("/slow.whl", Reply(body=bytes(64 * 1024), drip=(1, 0.2)))
        url = web.url.replace("http://", "http://user:secret@") + "/slow.whl"
        started = time.monotonic()
        with make_client() as client, pytest.raises(NetworkError) as caught:
            download(client, url, tmp_path / "file", pace=SHORT_PACE)
    assert time.monotonic() - started < 3
    message = caught.value.message
    assert message.startswith(f"{web.url.replace('http://', 'http://user:****@')}/slow.whl: too slow, ")
    assert "on average after 1 s): the server trickles or the link is stalled" in message
    assert caught.value.exit_code == 6
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "reply",
    [
        Reply(body=bytes(48 * 1024), drip=(2048, 0.1)),  # a slow link: about 20 KiB/s all along
        Reply(body=bytes(48 * 1024), drip=(16, 0.1), drip_bytes=128),  # a proxy trickles while it scans, then sends
    ],
    ids=["slow-link", "scanning-proxy"],
)
def test_a_slow_but_working_server_stays_inside_the_bound(tmp_path: Path, reply: Reply) -> None:
    with serve() as web:
        web.route("/file.whl", reply)
        with make_client() as client:
            download(client, f"{web.url}/file.whl", tmp_path / "file", size=48 * 1024, pace=SHORT_PACE)
    assert (tmp_path / "file").read_bytes() == reply.body


@pytest.mark.parametrize(
    ("path", "source"),
    [
        ("/p/demo.difypkg", "{url}/p/demo.difypkg"),  # a package download
        ("/api/v1/plugins/langgenius/demo", "langgenius/demo"),  # the Marketplace's answer naming the latest version
    ],
    ids=["download", "marketplace-answer"],
)
def test_pack_from_a_trickling_server_is_exit_6_within_seconds(
    path: str, source: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(http, "PACE", SHORT_PACE)
    with serve() as web:
        web.route(path, Reply(body=b"PK\x03\x04" + bytes(100_000), drip=(1, 0.25)))
        argv = ["pack", source.format(url=web.url), "--marketplace-url", web.url, "-o", str(tmp_path / "out")]
        started = time.monotonic()
        assert main([*argv, "--no-verify", "--cache-dir", str(tmp_path / "cache")]) == 6
        assert time.monotonic() - started < 5
    err = capsys.readouterr().err
    (error,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert error.startswith(f"error: {web.url}{path}: too slow, ") and "\ntip: " in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_a_redirect_loop_on_a_url_source_is_exit_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve() as web:
        web.redirect("/p/demo.difypkg", "/p/demo.difypkg")
        argv = ["pack", f"{web.url}/p/demo.difypkg", "-o", str(tmp_path / "out"), "--no-verify"]
        assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 6
    err = capsys.readouterr().err
    assert "too many redirects" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_verbose_shows_the_commands_and_their_output_not_http_debug(tmp_path: Path, index: LocalIndex) -> None:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    (tmp_path / "tmp").mkdir()
    argv = [sys.executable, "-m", "dify_repack", "-v", "pack", str(plugin), "--no-verify", "--index-url", index.url]
    argv += ["-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    commands = [line for line in lines if line.startswith("$ ")]
    assert any(" pip compile " in line or " lock" in line for line in commands), commands
    version_asked = lines.index(next(line for line in lines if line.startswith("$ ") and line.endswith(" --version")))
    assert lines[version_asked + 1].startswith("  uv "), "a command's output follows it, indented"
    assert not [line for line in lines if line.startswith(("httpx", "httpcore"))]


@needs_mounts
def test_an_output_folder_that_fills_while_zipping_is_exit_9_and_left_empty(tmp_path: Path, index: LocalIndex) -> None:
    """The space check passed (its minimum is lowered here), then the zip does not fit: no partial package stays."""
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    (plugin / "model.bin").write_bytes(os.urandom(512 * 1024))
    out = tmp_path / "out"
    out.mkdir()
    (tmp_path / "tmp").mkdir()
    argv = ["pack", str(plugin), "--no-verify", "--index-url", index.url, "-o", str(out)]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    code = f"import sys, dify_repack.packing as p; p.MIN_FREE_BYTES = 0; from dify_repack.cli import main; sys.exit(main({argv!r}))"
    result = _on_tmpfs(out, "size=128k", [sys.executable, "-c", code], _env(tmp_path))
    assert result.returncode == 9, result.stderr
    assert f"error: {out}: cannot write there: No space left on device" in result.stderr
    assert "Traceback" not in result.stderr
    assert _left_on_tmpfs(result) == []


def test_an_unwritable_wheelhouse_is_refused_before_any_download(tmp_path: Path) -> None:
    from dify_repack.packing import PackOptions, check_folders

    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    options = PackOptions(output_dir=tmp_path / "out", cache_dir=tmp_path / "cache", wheelhouse=blocker / "house")
    with pytest.raises(EnvironmentProblem, match="a-file/house: cannot write there") as raised:
        check_folders(options)
    assert "--wheelhouse DIR" in str(raised.value.tip)

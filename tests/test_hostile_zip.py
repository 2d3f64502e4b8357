"""Hostile .difypkg files: every command that reads a package refuses each one the same way.

One shared entry check (``package.open_package``) serves pack, inspect, verify, sign and verify-signature: a
refusal is exit 3 with one ``error:`` line naming the file as the user gave it, before anything is extracted,
and the run leaves nothing in -o, the cache or TMPDIR.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from builders import serve_index
from dify_repack import package as package_module
from dify_repack.errors import EnvironmentProblem, ExitCode, PackageError
from dify_repack.inspect import inspect_package
from dify_repack.package import extract_package, zip_checksum
from dify_repack.signing import generate_keypair
from hostile import (
    BAD_FILES,
    BAD_ZIPS,
    DEFLATED,
    Entry,
    assert_refused,
    build_zip,
    isolated_tmp,
    leftovers,
    plugin_entries,
    run,
    write_bad_package,
)


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "test", bits=2048)


# Each command, with every place it could write pointed into `work` (out/, cache/), and the local index
# unreachable: a refusal must come before any resolution.
COMMANDS: dict[str, Callable[[Path, Path, tuple[Path, Path]], list[str | Path]]] = {
    "inspect": lambda pkg, work, keys: ["inspect", pkg],
    "inspect --json": lambda pkg, work, keys: ["inspect", pkg, "--json"],
    "verify": lambda pkg, work, keys: ["verify", pkg, "--cache-dir", work / "cache", "--uv", "0.9.13"],
    "verify-signature": lambda pkg, work, keys: ["verify-signature", pkg, "--key", keys[1]],
    "sign": lambda pkg, work, keys: ["sign", pkg, "--key", keys[0], "-o", work / "out" / "signed.difypkg"],
    "pack": lambda pkg, work, keys: [
        "pack",
        pkg,
        "--no-verify",
        "-o",
        work / "out",
        "--cache-dir",
        work / "cache",
        "--index-url",
        "http://127.0.0.1:9/simple",
    ],
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", [*BAD_ZIPS, *BAD_FILES])
def test_every_reader_refuses_every_bad_package(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    keys: tuple[Path, Path],
    case: str,
    command: str,
) -> None:
    package = write_bad_package(tmp_path / "in", case)
    before = package.read_bytes()
    work = tmp_path / "work"
    with isolated_tmp(tmp_path / "tmp", monkeypatch):
        started = time.monotonic()
        outcome = run(capsys, *COMMANDS[command](package, work, keys))
    assert_refused(outcome, ExitCode.BAD_PACKAGE, package)
    assert time.monotonic() - started < 5
    assert leftovers(work) == []
    # The input is untouched and nothing was written beside it or outside the folders above.
    assert package.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in", "tmp"]
    assert leftovers(tmp_path / "in") == [package.name]


def test_nothing_is_extracted_before_the_check(tmp_path: Path) -> None:
    # The bad entry comes last: a reader that extracted as it went would have written the others.
    package = write_bad_package(tmp_path, "dotdot-name")
    dest = tmp_path / "dest"
    with pytest.raises(PackageError, match="outside the package"):
        extract_package(package, dest)
    assert leftovers(dest) == []
    assert not (tmp_path / "evil.py").exists()


def test_total_size_is_checked_before_extraction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package_module, "MAX_UNCOMPRESSED_BYTES", 1024 * 1024)
    package = build_zip(tmp_path / "big.difypkg", [*plugin_entries(), Entry("blob.bin", b"ab" * 600_000)])
    with pytest.raises(PackageError, match="safety limit"):
        extract_package(package, tmp_path / "dest")
    assert leftovers(tmp_path / "dest") == []


def test_entry_count_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package_module, "MAX_ENTRIES", 10)
    entries = [*plugin_entries(), *(Entry(f"data/{n}.txt", b"x") for n in range(10))]
    with pytest.raises(PackageError, match="15 entries, above the 10 safety limit"):
        zip_checksum(build_zip(tmp_path / "many.difypkg", entries))


def test_compressible_files_of_real_plugins_pass(tmp_path: Path) -> None:
    # The ratio check is for bombs: an empty 8 MiB placeholder and a large table are real content.
    table = "id,name,value\n" + "".join(f"{n},item{n % 977},{n * 0.37:.2f}\n" for n in range(400_000))
    package = build_zip(
        tmp_path / "ok.difypkg",
        [
            *plugin_entries(),
            Entry("model/placeholder.bin", b"\0" * (8 * 1024 * 1024), method=DEFLATED),
            Entry("data/table.csv", table.encode(), method=DEFLATED),
        ],
    )
    assert inspect_package(package).files == 7


def test_a_lying_size_never_writes_more_than_declared(tmp_path: Path) -> None:
    package = write_bad_package(tmp_path, "size-lie")
    dest = tmp_path / "dest"
    with pytest.raises(PackageError, match="corrupt"):
        extract_package(package, dest)
    assert (dest / "data.bin").stat().st_size <= 10


def test_a_downloaded_package_is_named_by_its_url_not_its_temp_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with serve_index(tmp_path / "site") as site:
        write_bad_package(site.files, "duplicate-entry")
        url = site.url.replace("/simple", "/files/duplicate-entry.difypkg")
        with isolated_tmp(tmp_path / "tmp", monkeypatch):
            outcome = run(capsys, "pack", url, "--no-verify", "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache")
    assert_refused(outcome, ExitCode.BAD_PACKAGE, f"{url}: entry 'main.py' appears twice")
    assert str(tmp_path / "tmp") not in outcome.err
    assert leftovers(tmp_path / "out") == [] and leftovers(tmp_path / "cache") == []


def test_a_full_disk_while_extracting_is_a_host_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = build_zip(tmp_path / "ok.difypkg", plugin_entries())
    real_open = Path.open

    def full(self: Path, mode: str = "r", *args: object, **kwargs: object):  # type: ignore[no-untyped-def]
        if "w" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(self, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(EnvironmentProblem, match="No space left on device") as caught:
        extract_package(package, tmp_path / "dest")
    assert caught.value.exit_code == ExitCode.ENVIRONMENT

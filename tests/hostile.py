"""Named bad inputs for the hardening tests: zips written byte by byte, and the checks every refusal must pass.

``build_zip`` writes local headers and the central directory itself, so a test can set exactly what a hostile
package would: duplicate or NUL-bearing names, flags, compression methods, CRCs and declared sizes that lie.
"""

from __future__ import annotations

import stat
import struct
import tempfile
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from builders import MAIN_PY, manifest_yaml
from dify_repack.cli import main

STORED, DEFLATED = 0, 8
UTF8_FLAG = 0x800


@dataclass(frozen=True)
class Entry:
    name: str | bytes
    data: bytes = b""
    method: int = STORED
    flags: int = 0
    crc: int | None = None  # None: the real CRC-32 of data
    file_size: int | None = None  # the declared uncompressed size; None: len(data)
    mode: int = stat.S_IFREG | 0o644
    payload: bytes | None = None  # the stored bytes; None: data, deflated when method is DEFLATED
    local_name: str | bytes | None = None  # the local header's name when it should differ from the central one


def _deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    return compressor.compress(data) + compressor.flush()


def build_zip(path: Path, entries: list[Entry], *, comment: bytes = b"") -> Path:
    """Write ``entries`` as a zip, exactly as given (no checks, no normalisation)."""
    body, central = bytearray(), bytearray()
    for entry in entries:
        name = entry.name.encode() if isinstance(entry.name, str) else entry.name
        local = entry.local_name if entry.local_name is not None else entry.name
        local_name = local.encode() if isinstance(local, str) else local
        payload = entry.payload
        if payload is None:
            payload = _deflate(entry.data) if entry.method == DEFLATED else entry.data
        crc = zlib.crc32(entry.data) if entry.crc is None else entry.crc
        size = len(entry.data) if entry.file_size is None else entry.file_size
        offset = len(body)
        # flags, method, time 00:00, date 1980-01-01, CRC, sizes: the same in both headers
        common = (entry.flags, entry.method, 0, 0x21, crc, len(payload), size)
        body += struct.pack("<4s5H3L2H", b"PK\x03\x04", 20, *common, len(local_name), 0) + local_name + payload
        # made by unix (3), spec 2.0: the mode in external_attr is read
        central += struct.pack(
            "<4s6H3L5H2L", b"PK\x01\x02", 0x0314, 20, *common, len(name), 0, 0, 0, 0, entry.mode << 16, offset
        )
        central += name
    end = struct.pack(
        "<4s4H2LH", b"PK\x05\x06", 0, 0, len(entries), len(entries), len(central), len(body), len(comment)
    )
    path.write_bytes(bytes(body + central + end + comment))
    return path


def plugin_entries(**overrides: bytes) -> list[Entry]:
    """A valid plugin's entries; ``overrides`` replace file contents by name (``manifest_yaml=...``)."""
    files = {
        "manifest.yaml": manifest_yaml().encode(),
        "main.py": MAIN_PY.encode(),
        "_assets/icon.svg": b"<svg/>",
        "provider/demo.yaml": b"identity:\n  name: demo\n",
        "requirements.txt": b"dify_plugin==0.7.4\n",
    }
    files.update({name.replace("_yaml", ".yaml"): data for name, data in overrides.items()})
    return [Entry(name, data, method=DEFLATED) for name, data in files.items()]


MIB = 1024 * 1024

# Each builds a package around one hostile trait; the reading side must refuse it with exit 3.
BAD_ZIPS: dict[str, Callable[[], list[Entry]]] = {
    "duplicate-entry": lambda: [*plugin_entries(), Entry("main.py", b"import os; os.system('id')\n")],
    "duplicate-after-normalising": lambda: [*plugin_entries(), Entry("provider//demo.yaml", b"x: 1\n")],
    "nul-in-name": lambda: [*plugin_entries(), Entry(b"main.py\x00.txt", b"print(2)\n")],
    "encrypted-entry": lambda: [*plugin_entries(), Entry("secret.py", b"\x00" * 24, flags=0x1)],
    "bzip2-entry": lambda: [*plugin_entries(), Entry("data.bin", b"BZh91AY&SY", method=12)],
    "lzma-entry": lambda: [*plugin_entries(), Entry("data.bin", b"\x00" * 9, method=14)],
    "unknown-method": lambda: [*plugin_entries(), Entry("data.bin", b"abc", method=99)],
    "file-beside-folder": lambda: [*plugin_entries(), Entry("lib", b"a file"), Entry("lib/mod.py", b"x = 1\n")],
    "non-utf8-name-flagged-utf8": lambda: [*plugin_entries(), Entry(b"\xff\xfe.py", b"x = 1\n", flags=UTF8_FLAG)],
    "bad-crc": lambda: [*plugin_entries(), Entry("data.txt", b"hello", crc=0xDEADBEEF)],
    "corrupt-deflate": lambda: [*plugin_entries(), Entry("data.txt", b"hello", method=DEFLATED, payload=b"\xff" * 16)],
    "size-lie": lambda: [
        *plugin_entries(),
        Entry("data.bin", b"\x00" * MIB, method=DEFLATED, file_size=10),
    ],
    "ratio-bomb": lambda: [
        *plugin_entries(),
        Entry("zeros.bin", b"", method=DEFLATED, file_size=1024 * MIB, payload=_deflate(b"\x00" * MIB)[:1000]),
    ],
    "symlink-entry": lambda: [*plugin_entries(), Entry("key.txt", b"/root/.ssh/id_rsa", mode=stat.S_IFLNK | 0o777)],
    "absolute-name": lambda: [*plugin_entries(), Entry("/tmp/evil.py", b"x = 1\n")],
    "absolute-name-huge": lambda: [*plugin_entries(), Entry("/" + "\x01" * 60_000, b"x = 1\n")],
    "dotdot-name": lambda: [*plugin_entries(), Entry("../evil.py", b"x = 1\n")],
    "backslash-name": lambda: [*plugin_entries(), Entry("..\\evil.py", b"x = 1\n")],
    "name-too-long": lambda: [*plugin_entries(), Entry("a" * 300 + ".py", b"x = 1\n")],
    "path-too-deep": lambda: [*plugin_entries(), Entry("d/" * 600 + "x.py", b"x = 1\n")],
    "header-name-mismatch": lambda: [*plugin_entries(), Entry("good.py", b"x = 1\n", local_name="evil.py")],
}


def _truncated(path: Path) -> None:
    build_zip(path, plugin_entries())
    path.write_bytes(path.read_bytes()[:200])


# Files that are not zips at all, or no longer are.
BAD_FILES: dict[str, Callable[[Path], None]] = {
    "not-a-zip": lambda path: path.write_text("<html>Rate limit exceeded</html>\n"),
    "empty-file": lambda path: path.write_bytes(b""),
    "truncated": _truncated,
}


def write_bad_package(directory: Path, case: str) -> Path:
    """The named bad input ``case`` (a key of BAD_ZIPS or BAD_FILES) as ``directory/<case>.difypkg``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{case}.difypkg"
    if case in BAD_FILES:
        BAD_FILES[case](path)
        return path
    return build_zip(path, BAD_ZIPS[case]())


# --- running the CLI and checking a refusal --------------------------------------------------------------


@dataclass(frozen=True)
class Outcome:
    code: int
    out: str
    err: str

    @property
    def error_lines(self) -> list[str]:
        return [line for line in self.err.splitlines() if line.startswith("error:")]


def run(capsys: pytest.CaptureFixture[str], *args: str | Path) -> Outcome:
    capsys.readouterr()
    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return Outcome(code, captured.out, captured.err)


def assert_refused(outcome: Outcome, code: int, *named: str | Path) -> None:
    """The documented exit code, exactly one ``error:`` line naming the input, no traceback."""
    assert outcome.code == code, outcome.err
    assert len(outcome.error_lines) == 1, outcome.err
    assert len(outcome.error_lines[0]) < 2000, "a name from the input is shown bounded"
    assert "Traceback" not in outcome.err + outcome.out
    assert "unexpected" not in outcome.err
    for name in named:
        assert str(name) in outcome.error_lines[0], outcome.err


@contextmanager
def isolated_tmp(directory: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Point TMPDIR (and tempfile) at an empty folder, and check that the command leaves it empty."""
    directory.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("TMPDIR", str(directory))
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    yield directory
    assert sorted(p.name for p in directory.iterdir()) == [], "temporary files left behind"


def leftovers(folder: Path) -> list[str]:
    """Everything below ``folder`` (empty when a refused run left nothing)."""
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []

"""Property: whatever bytes or manifest arrive, inspect and pack end with a documented exit code and a clean floor.

Random bytes, valid packages with bytes flipped or cut, zips of random entries (names, flags, methods, sizes)
and random manifests go to ``inspect`` and ``pack --no-verify`` in-process. Never exit 1, never a traceback,
nothing left in TMPDIR or -o (unless pack succeeded). The index is an empty one on 127.0.0.1: pack never reaches
the network, and a package that gets as far as resolving ends at once with exit 4 (no such project).
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from builders import LocalIndex, make_plugin, manifest_yaml, serve_index
from dify_repack.cli import main
from hostile import DEFLATED, STORED, UTF8_FLAG, Entry, build_zip, plugin_entries

DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10}
SETTINGS = settings(
    max_examples=40,
    deadline=None,
    derandomize=True,  # the same examples on every run: a failure here is reproducible, never flaky
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@contextlib.contextmanager
def _sandbox() -> Iterator[Path]:
    """A fresh folder that is also TMPDIR for the run; it must hold only what the test itself put there."""
    with tempfile.TemporaryDirectory(prefix="hostile-property-") as base:
        root = Path(base)
        (root / "tmp").mkdir()
        saved = os.environ.get("TMPDIR"), tempfile.tempdir
        os.environ["TMPDIR"] = tempfile.tempdir = str(root / "tmp")
        try:
            yield root
        finally:
            if saved[0] is None:
                os.environ.pop("TMPDIR", None)
            else:
                os.environ["TMPDIR"] = saved[0]
            tempfile.tempdir = saved[1]


def _run(*argv: str | Path) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(arg) for arg in argv])
    return code, out.getvalue() + err.getvalue()


@pytest.fixture(scope="module")
def empty_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    with serve_index(tmp_path_factory.mktemp("empty-index")) as index:
        yield index


def _check_both_commands(root: Path, source: Path, index: LocalIndex) -> None:
    for argv in (
        ["inspect", source],
        ["pack", source, "--no-verify", "-o", root / "out", "--cache-dir", root / "cache", "--index-url", index.url],
    ):
        code, output = _run(*argv)
        assert code in DOCUMENTED, output
        assert "Traceback" not in output and "unexpected" not in output, output
        assert all(len(line) < 2000 for line in output.splitlines() if line.startswith("error:")), output
        assert list((root / "tmp").iterdir()) == [], f"{argv[0]} left temporary files"
        out = list((root / "out").iterdir()) if (root / "out").exists() else []
        assert out == [] or (argv[0] == "pack" and code == 0 and len(out) == 1), out


def _good_zip_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as temp:
        return build_zip(Path(temp) / "good.difypkg", plugin_entries()).read_bytes()


GOOD_ZIP = _good_zip_bytes()

mutations = st.lists(st.tuples(st.integers(0, len(GOOD_ZIP) - 1), st.integers(0, 255)), min_size=1, max_size=8)
names = st.one_of(
    st.sampled_from(["manifest.yaml", "main.py", "x", "x/y", "wheels/", "../a", "/abs", "a\\b", "", "."]),
    st.text(alphabet="ab/.\\\x00-é", min_size=0, max_size=12),
    st.binary(min_size=1, max_size=8),
    st.integers(200, 1200).map(lambda n: ("ab/" * n)[:n]),  # long names and deep paths
)
entries = st.builds(
    Entry,
    name=names,
    data=st.binary(max_size=64),
    method=st.sampled_from([STORED, DEFLATED, 12, 14, 99]),
    flags=st.sampled_from([0, 0x1, UTF8_FLAG, 0x8]),
    crc=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    file_size=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
    mode=st.sampled_from([0o100644, 0o120777, 0o040755, 0o010644, 0]),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    st.text(alphabet="aZ09._-/\\ \x00é:{}[]&*!", max_size=20),
)
fields = st.sampled_from(["version", "author", "name", "type", "icon", "meta", "runner", "arch", "entrypoint"])
manifests = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(fields, inner, max_size=5), max_leaves=20
)


@SETTINGS
@given(st.binary(max_size=2048))
def test_random_bytes(empty_index: LocalIndex, data: bytes) -> None:
    with _sandbox() as root:
        (root / "in.difypkg").write_bytes(data)
        _check_both_commands(root, root / "in.difypkg", empty_index)


@SETTINGS
@given(mutations, st.one_of(st.none(), st.integers(0, len(GOOD_ZIP))))
def test_valid_package_with_bytes_flipped_or_cut(
    empty_index: LocalIndex, flips: list[tuple[int, int]], cut: int | None
) -> None:
    data = bytearray(GOOD_ZIP)
    for position, value in flips:
        data[position] = value
    with _sandbox() as root:
        (root / "in.difypkg").write_bytes(bytes(data[:cut]))
        _check_both_commands(root, root / "in.difypkg", empty_index)


@SETTINGS
@given(st.lists(entries, max_size=5))
def test_zip_of_random_entries(empty_index: LocalIndex, extra: list[Entry]) -> None:
    with _sandbox() as root:
        build_zip(root / "in.difypkg", [*plugin_entries(), *extra])
        _check_both_commands(root, root / "in.difypkg", empty_index)


@SETTINGS
@given(st.one_of(manifests, st.dictionaries(fields, manifests, max_size=8)), st.booleans())
def test_random_manifest_in_a_package_and_a_folder(empty_index: LocalIndex, document: object, merge: bool) -> None:
    if merge and isinstance(document, dict):
        # Random values over a valid manifest: each field alone gets its chance to be wrong.
        document = {**yaml.safe_load(manifest_yaml()), **document}
    text = yaml.safe_dump(document, allow_unicode=True)
    with _sandbox() as root:
        folder = make_plugin(root / "plugin", {"manifest.yaml": text, "requirements.txt": "dify_plugin==0.7.4\n"})
        package = root / "in.difypkg"
        build_zip(package, [*plugin_entries(manifest_yaml=text.encode())])
        _check_both_commands(root, package, empty_index)
        _check_both_commands(root, folder, empty_index)

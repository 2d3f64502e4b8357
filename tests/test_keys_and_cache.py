"""Hazards around keys and the cache: nothing the tool does may destroy a key or delete a folder it did not make."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin
from dify_repack.errors import ExitCode, UsageError
from dify_repack.package import write_package
from dify_repack.packing import PackOptions, pack
from dify_repack.report import NullReporter
from dify_repack.resolve import Indexes
from dify_repack.signing import generate_keypair, key_permission_warning, sign_package
from dify_repack.wheels import CACHEDIR_TAG, WheelCache
from hostile import assert_refused, run


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "test", bits=2048)


def _key_copy(key: Path, path: Path, mode: int) -> Path:
    path.write_bytes(key.read_bytes())
    path.chmod(mode)
    return path


@pytest.fixture
def package(tmp_path: Path) -> Path:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    return write_package(plugin, tmp_path / "demo.difypkg").path


@pytest.mark.parametrize("bits", ["1024", "16385", "99999999", "-1"])
def test_keygen_bits_are_bounded(tmp_path: Path, capsys: pytest.CaptureFixture[str], bits: str) -> None:
    started = time.monotonic()
    outcome = run(capsys, "keygen", tmp_path / "k", "--bits", bits)
    assert time.monotonic() - started < 1
    assert outcome.code == ExitCode.USAGE
    assert "2048<=x<=16384" in outcome.err and "Traceback" not in outcome.err
    assert list(tmp_path.iterdir()) == []


def test_the_library_bounds_bits_too(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="hours"):
        generate_keypair(tmp_path / "k", bits=99_999_999)


def test_sign_never_writes_over_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: tuple[Path, Path], package: Path
) -> None:
    private = _key_copy(keys[0], tmp_path / "copy.private.pem", 0o600)
    before = private.read_bytes()
    assert_refused(run(capsys, "sign", package, "--key", private, "-o", private), ExitCode.USAGE, private)
    # The same file under another name (a hard link) is the key too.
    alias = tmp_path / "alias.difypkg"
    alias.hardlink_to(private)
    assert_refused(run(capsys, "sign", package, "--key", private, "-o", alias), ExitCode.USAGE, alias)
    with pytest.raises(UsageError, match="is the private key"):
        sign_package(package, private, private)
    assert private.read_bytes() == before


def test_sign_never_replaces_its_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: tuple[Path, Path], package: Path
) -> None:
    before = package.read_bytes()
    outcome = run(capsys, "sign", package, "--key", keys[0], "-o", package)
    assert_refused(outcome, ExitCode.USAGE, package)
    assert "tip:" in outcome.err and package.read_bytes() == before


def test_a_readable_private_key_gets_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], keys: tuple[Path, Path], package: Path
) -> None:
    loose = _key_copy(keys[0], tmp_path / "loose.private.pem", 0o644)
    outcome = run(capsys, "sign", package, "--key", loose)
    assert outcome.code == 0
    warnings = [line for line in outcome.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and str(loose) in warnings[0] and "0644" in warnings[0]
    loose.chmod(0o600)
    assert key_permission_warning(loose) is None
    assert "warning:" not in run(capsys, "sign", package, "--key", loose, "-o", tmp_path / "again.difypkg").err


class _Warnings(NullReporter):
    def __init__(self) -> None:
        self.lines: list[str] = []

    def warn(self, message: str) -> None:
        self.lines.append(message)


def test_pack_warns_about_a_readable_signing_key_and_tags_its_cache(
    tmp_path: Path, keys: tuple[Path, Path], index: LocalIndex
) -> None:
    loose = _key_copy(keys[0], tmp_path / "loose.private.pem", 0o640)
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    reporter = _Warnings()
    cache = tmp_path / "cache"
    options = PackOptions(output_dir=tmp_path / "out", indexes=Indexes(index.url), cache_dir=cache, sign_key=loose)
    pack(plugin, options, reporter)
    assert any("readable by others (mode 0640)" in line for line in reporter.lines)
    assert (cache / CACHEDIR_TAG).read_text().startswith("Signature: 8a477f597d28d172789f06886806bc55")


def test_cache_clean_refuses_a_folder_it_did_not_create(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    precious = tmp_path / "thesis"
    precious.mkdir()
    (precious / "chapter1.tex").write_text("...")
    outcome = run(capsys, "cache", "clean", "--cache-dir", precious)
    assert_refused(outcome, ExitCode.USAGE, precious)
    assert "tip:" in outcome.err
    assert (precious / "chapter1.tex").read_text() == "..."


def test_cache_clean_refuses_a_foreign_cache_tag_and_a_link(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Another tool's cache carries the same standard tag, without our name.
    other = tmp_path / "other-cache"
    other.mkdir()
    (other / CACHEDIR_TAG).write_text("Signature: 8a477f597d28d172789f06886806bc55\n# some other tool\n")
    assert run(capsys, "cache", "clean", "--cache-dir", other).code == ExitCode.USAGE
    ours = tmp_path / "ours"
    WheelCache(ours).mark()
    link = tmp_path / "link"
    link.symlink_to(ours)
    assert run(capsys, "cache", "clean", "--cache-dir", link).code == ExitCode.USAGE
    assert other.exists() and ours.exists()


def test_cache_clean_removes_what_the_tool_created(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    WheelCache(cache).mark()
    (cache / "files").mkdir()
    (cache / "files" / "x.whl").write_bytes(b"x")
    assert run(capsys, "cache", "clean", "--cache-dir", cache).code == 0
    assert not cache.exists()
    assert run(capsys, "cache", "clean", "--cache-dir", cache).code == 0  # nothing there: nothing to do


def test_a_public_key_given_by_mistake_gets_no_permission_warning(keys: tuple[Path, Path]) -> None:
    assert keys[1].stat().st_mode & 0o044  # public keys are 0644 on purpose
    assert key_permission_warning(keys[1]) is None


def test_the_first_wheel_built_from_an_sdist_stays_when_a_parallel_run_builds_it_again(tmp_path: Path) -> None:
    cache = WheelCache(tmp_path / "cache")
    build_dir = tmp_path / "cache" / "built" / "x"
    first, second = tmp_path / "a" / "w-1.0-py3-none-any.whl", tmp_path / "b" / "w-1.0-py3-none-any.whl"
    for path, content in ((first, b"first build"), (second, b"second build, other timestamps")):
        path.parent.mkdir()
        path.write_bytes(content)
    kept = cache.store_built(first, build_dir)
    other_run = WheelCache(tmp_path / "cache")
    assert other_run.store_built(second, build_dir) == kept
    assert kept.read_bytes() == b"first build" and not second.exists()
    assert cache.built_wheels(build_dir) == [kept]  # still the file this run checked

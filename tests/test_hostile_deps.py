"""Hostile and broken dependency declarations: includes leading out of the plugin, hash pins, stated versions,
a tampered cache, odd index links and malformed files. Each named bad input is packed through the CLI and must
give its documented exit code, one line naming the file and line, nothing left in -o, the cache or TMPDIR, and
keep its security property (no outside file read, nothing of it printed or sent)."""

from __future__ import annotations

import hashlib
import html
import json
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from builders import FAKE_SDK_FILES, LocalIndex, make_plugin, make_wheel, serve_index
from dify_repack.cli import main
from dify_repack.errors import DependencyError
from dify_repack.package import write_package, zip_checksum
from dify_repack.reqfile import logical_lines, parse_requirements_file
from dify_repack.requirements import declared_dependencies
from fakeweb import Reply, serve

TOKEN = "tok-6f1d9c0e-not-a-real-secret"


@dataclass
class Run:
    code: int
    out: str
    err: str


@dataclass
class Setup:
    """Where one test packs to: output, cache and a TMPDIR of its own, checked empty after a failure."""

    tmp: Path
    index: LocalIndex
    capsys: pytest.CaptureFixture[str]

    @property
    def out(self) -> Path:
        return self.tmp / "out"

    @property
    def cache(self) -> Path:
        return self.tmp / "cache"

    @property
    def tempdir(self) -> Path:
        return self.tmp / "tmpdir"

    def pack(self, plugin: Path, *args: str, index_url: str | None = None, verify: bool = False) -> Run:
        self.capsys.readouterr()
        code = main(
            [
                "pack",
                str(plugin),
                "-o",
                str(self.out),
                "--cache-dir",
                str(self.cache),
                "--index-url",
                index_url or self.index.url,
                *([] if verify else ["--no-verify"]),
                *args,
            ]
        )
        captured = self.capsys.readouterr()
        return Run(code, captured.out, captured.err)

    def assert_refused(self, run: Run, code: int, *needles: str) -> str:
        """The run failed with ``code`` and one ``error:`` line holding ``needles``; nothing was left behind."""
        assert run.code == code, run.err
        errors = [line for line in run.err.splitlines() if line.startswith("error:")]
        assert len(errors) == 1, run.err
        for needle in needles:
            assert needle in errors[0]
        assert "Traceback" not in run.err
        assert not self.out.exists() or not list(self.out.iterdir()), "no package, not even a partial one"
        assert not list(self.tempdir.iterdir()), "temporary folders are removed"
        leftovers = [p for p in self.cache.rglob("*") if p.name.endswith(".part")] if self.cache.exists() else []
        assert not leftovers
        return errors[0]


@pytest.fixture
def setup(
    tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> Setup:
    result = Setup(tmp_path, index, capsys)
    result.tempdir.mkdir()
    monkeypatch.setenv("TMPDIR", str(result.tempdir))
    monkeypatch.setattr(tempfile, "tempdir", None)  # gettempdir() reads TMPDIR again
    monkeypatch.setenv("DIFY_TEST_TOKEN", TOKEN)
    return result


@pytest.fixture(scope="session")
def own_uv() -> str:
    """Our own uv's version: verify then replays with our binary and downloads no uv."""
    from dify_repack.runner import run
    from dify_repack.uvbin import uv_bin

    return run([uv_bin(), "--version"]).output.split()[1]


def _wheel_sha256(index: LocalIndex, filename: str) -> str:
    return hashlib.sha256((index.files / filename).read_bytes()).hexdigest()


def _shipped(package: Path, name: str) -> str:
    with zipfile.ZipFile(package) as archive:
        return archive.read(name).decode()


def _pins(out: Path) -> list[str]:
    """The requirement of each line of the shipped requirements.txt, without its --hash options."""
    text = _shipped(_package(out), "requirements.txt")
    return [line.split(" --hash")[0].strip() for _, line in logical_lines(text) if not line.startswith("-")]


def _package(out: Path) -> Path:
    (package,) = out.glob("*.difypkg")
    return package


# Includes: only files inside the plugin, never read otherwise.

OUTSIDE_INCLUDES = {
    "proc-environ": "-r /proc/self/environ",
    "etc-passwd": "-r /etc/passwd",
    "beside-the-plugin": "-r ../beside.txt",
    "dot-dot-inside-a-path": "-r sub/../../beside.txt",
    "long-option-equals": "--requirement=/proc/self/environ",
    "short-option-equals": "-r=/etc/passwd",
    "short-option-attached": "-r/etc/passwd",
    "quoted": "-r '/proc/self/environ'",
    "constraint": "-c /proc/self/environ",
    "constraint-long": "--constraint /etc/passwd",
    "abbreviated-option": "--constr /proc/self/environ",
    "url": "-r https://example.invalid/requirements.txt",
    "file-url": "-r file:///etc/passwd",
    "environment-variable": "-r ${HOME}/.netrc",
}


@pytest.mark.parametrize("line", OUTSIDE_INCLUDES.values(), ids=OUTSIDE_INCLUDES.keys())
def test_an_include_outside_the_plugin_is_refused_unread(setup: Setup, line: str) -> None:
    (setup.tmp / "beside.txt").write_text(f"stolen=={TOKEN}\n")
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": f"dify_plugin==0.7.4\n{line}\n"})
    requests_before = len(setup.index.requests)

    run = setup.pack(plugin, "--json")

    error = setup.assert_refused(run, 4, "requirements.txt:2:", "only plain paths inside the plugin folder")
    assert TOKEN not in run.out + run.err
    assert "root:" not in run.out + run.err, "nothing of /etc/passwd"
    assert error.count("\n") == 0
    assert len(setup.index.requests) == requests_before, "refused before any request to the index"


def test_a_nested_include_names_its_own_file_and_line(setup: Setup) -> None:
    plugin = make_plugin(
        setup.tmp / "src",
        {
            "requirements.txt": "dify_plugin==0.7.4\n-r more/base.txt\n",
            "more/base.txt": "# base\n\nhelper\n-c ../../outside.txt\n",
        },
    )
    run = setup.pack(plugin)
    setup.assert_refused(run, 4, "more/base.txt:4:", "outside the plugin folder")


def test_a_symbolic_link_leading_out_is_refused_without_opening_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin folder (as pack copies it) whose included file is a link to a file outside.
    secret = tmp_path / "secret.txt"
    secret.write_text(f"stolen=={TOKEN}\n")
    root = tmp_path / "plugin"
    root.mkdir()
    (root / "requirements.txt").write_text("dify_plugin==0.7.4\n-r extra.txt\n")
    (root / "extra.txt").symlink_to(secret)
    opened: list[Path] = []
    real_open = Path.open

    def spy(self: Path, *args: Any, **kwargs: Any) -> Any:
        opened.append(self.resolve())
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", spy)
    with pytest.raises(DependencyError, match=r"requirements\.txt:2: -r 'extra\.txt' is outside the plugin folder"):
        declared_dependencies(root)
    assert secret.resolve() not in opened and root / "requirements.txt" in opened, "the spy sees what is read"

    (root / "requirements.txt").unlink()
    (root / "requirements.txt").symlink_to(secret)
    with pytest.raises(DependencyError, match=r"^requirements\.txt: leads outside the plugin folder"):
        declared_dependencies(root)
    assert secret.resolve() not in opened


def test_include_forms_inside_the_plugin_are_followed(tmp_path: Path) -> None:
    (tmp_path / "a b.txt").write_text("helper\n")
    (tmp_path / "c.txt").write_text("fastmath\n")
    (tmp_path / "d.txt").write_text("armonly\n")
    (tmp_path / "pins.txt").write_text("helper==1.0.0\n")
    (tmp_path / "requirements.txt").write_text(
        "\ufeffdify_plugin==0.7.4\n-r 'a b.txt'\n--requirement=c.txt\n-rd.txt\n--constraint pins.txt\n"
    )
    parsed = parse_requirements_file(tmp_path / "requirements.txt", root=tmp_path)
    assert [str(r) for r in parsed.requirements] == ["dify_plugin==0.7.4", "helper", "fastmath", "armonly"]
    assert [str(r) for r in parsed.constraints] == ["helper==1.0.0"]


def test_an_include_loop_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_text("-r other.txt\n")
    (tmp_path / "other.txt").write_text("-r requirements.txt\n")
    with pytest.raises(DependencyError, match="includes itself"):
        parse_requirements_file(tmp_path / "requirements.txt", root=tmp_path)


# Constraints are honoured.


def test_a_constraint_file_limits_the_resolution(setup: Setup) -> None:
    plugin = make_plugin(
        setup.tmp / "src",
        {"requirements.txt": "dify_plugin==0.7.4\n-c constraints.txt\n", "constraints.txt": "helper==1.0.0\n"},
    )
    run = setup.pack(plugin)
    assert run.code == 0, run.err
    assert "helper==1.0.0" in _pins(setup.out)


def test_uv_constraint_dependencies_are_honoured(setup: Setup) -> None:
    pyproject = (
        '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["dify_plugin==0.7.4"]\n\n'
        '[tool.uv]\nconstraint-dependencies = ["helper<1.1"]\n'
    )
    plugin = make_plugin(setup.tmp / "src", {"pyproject.toml": pyproject})
    run = setup.pack(plugin)
    assert run.code == 0, run.err
    assert "helper==1.0.0" in _pins(setup.out)


def test_an_impossible_constraint_fails_naming_the_package(setup: Setup) -> None:
    plugin = make_plugin(
        setup.tmp / "src",
        {"requirements.txt": "dify_plugin==0.7.4\n-c constraints.txt\n", "constraints.txt": "helper>=5\n"},
    )
    setup.assert_refused(setup.pack(plugin), 4, "helper")


# --hash pins: kept, and the shipped file must match them.


def test_matching_hash_pins_are_accepted_and_keep_their_version(setup: Setup) -> None:
    helper = _wheel_sha256(setup.index, "helper-1.0.0-py3-none-any.whl")
    sdk = _wheel_sha256(setup.index, "dify_plugin-0.7.4-py3-none-any.whl")
    # uv.lock pins a version that does not exist: preferences are dropped, the hash-pinned version stays.
    lock = (
        '[[package]]\nname = "dify-plugin"\nversion = "0.0.1"\nsource = { registry = "https://index.invalid/simple" }\n'
    )
    plugin = make_plugin(
        setup.tmp / "src",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\n'
            'dependencies = ["dify_plugin==0.7.4", "helper>=1"]\n',
            "uv.lock": lock,
            "requirements.txt": f"dify_plugin==0.7.4 --hash=sha256:{sdk}\n"
            f"helper==1.0.0 \\\n    --hash=sha256:{'0' * 64} \\\n    --hash=sha256:{helper}\n",
        },
    )
    run = setup.pack(plugin, "--json")
    assert run.code == 0, run.err
    assert "helper==1.0.0" in _pins(setup.out)


def test_a_hash_pinning_plugin_ships_hashes_that_every_daemon_installer_checks(
    setup: Setup, python312: Path, own_uv: str
) -> None:
    sdk = _wheel_sha256(setup.index, "dify_plugin-0.7.4-py3-none-any.whl")
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": f"dify_plugin==0.7.4 --hash=sha256:{sdk}\n"})
    run = setup.pack(plugin, "--uv", own_uv, "--json", verify=True)
    assert run.code == 0, run.err
    assert json.loads(run.out)["results"][0]["verification"]["ok"] is True
    shipped = _shipped(_package(setup.out), "requirements.txt")
    assert f"dify_plugin==0.7.4 \\\n    --hash=sha256:{sdk}\n" in shipped
    helper = _wheel_sha256(setup.index, "helper-1.1.0-py3-none-any.whl")
    assert f"helper==1.1.0 \\\n    --hash=sha256:{helper}\n" in shipped, "pip wants a hash on every line"


def test_a_shipped_file_that_matches_no_hash_pin_fails_naming_the_package(setup: Setup) -> None:
    plugin = make_plugin(
        setup.tmp / "src", {"requirements.txt": f"dify_plugin==0.7.4\nhelper==1.0.0 --hash=sha256:{'ab' * 32}\n"}
    )
    error = setup.assert_refused(setup.pack(plugin), 4, "helper 1.0.0", "requirements.txt:2")
    assert _wheel_sha256(setup.index, "helper-1.0.0-py3-none-any.whl") in error


def test_require_hashes_needs_a_hash_for_every_shipped_package(setup: Setup) -> None:
    sdk = _wheel_sha256(setup.index, "dify_plugin-0.7.4-py3-none-any.whl")
    plugin = make_plugin(
        setup.tmp / "src", {"requirements.txt": f"--require-hashes\ndify_plugin==0.7.4 --hash=sha256:{sdk}\n"}
    )
    setup.assert_refused(setup.pack(plugin), 4, "helper", "--require-hashes")


BAD_HASH_LINES = {
    "no-exact-pin": "helper>=1 --hash=sha256:" + "ab" * 32,
    "weak-algorithm": "helper==1.0.0 --hash=md5:" + "ab" * 16,
    "short-digest": "helper==1.0.0 --hash=sha256:abc",
    "not-hex": "helper==1.0.0 --hash=sha256:" + "zz" * 32,
    "unknown-option": "helper==1.0.0 --frobnicate",
}


@pytest.mark.parametrize("line", BAD_HASH_LINES.values(), ids=BAD_HASH_LINES.keys())
def test_a_malformed_hash_line_names_the_file_and_line(setup: Setup, line: str) -> None:
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": f"dify_plugin==0.7.4\n{line}\n"})
    setup.assert_refused(setup.pack(plugin), 4, "requirements.txt:2:")


# Versions the plugin pinned are preferred, and every one that changes is listed.


def test_exact_pins_of_an_agreeing_requirements_file_are_preferred(setup: Setup) -> None:
    # pyproject.toml asks a range; requirements.txt (an export, the only pin record) pins within it.
    plugin = make_plugin(
        setup.tmp / "src",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\n'
            'dependencies = ["dify_plugin>=0.7", "helper>=1"]\n',
            "requirements.txt": "dify-plugin==0.7.4\n    # via demo\nhelper==1.0.0\n",
        },
    )
    run = setup.pack(plugin, "--json")
    assert run.code == 0, run.err
    assert "helper==1.0.0" in _pins(setup.out)
    assert json.loads(run.out)["results"][0]["pin_changes"] == []


def test_every_changed_pin_is_listed_in_the_summary_and_the_json(setup: Setup) -> None:
    # requirements.txt contradicts pyproject.toml (so it is not preferred), and uv.lock pins a missing version.
    lock = '[[package]]\nname = "helper"\nversion = "9.9.9"\nsource = { registry = "https://index.invalid/simple" }\n'
    plugin = make_plugin(
        setup.tmp / "src",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\n'
            'dependencies = ["dify_plugin==0.7.4", "fastmath>=2"]\n',
            "requirements.txt": "dify_plugin==0.7.4\nfastmath==1.0.0\n",
            "uv.lock": lock,
        },
    )
    run = setup.pack(plugin)
    assert run.code == 0, run.err
    assert "changed   fastmath 1.0.0 → 2.0.0 (pinned in requirements.txt:2)" in run.out
    assert "changed   helper 9.9.9 → 1.1.0 (pinned in uv.lock)" in run.out

    for package in setup.out.iterdir():
        package.unlink()
    result = json.loads(setup.pack(plugin, "--json").out)["results"][0]
    assert sorted(result["pin_changes"], key=lambda change: change["name"]) == [
        {"name": "fastmath", "declared": "1.0.0", "shipped": "2.0.0", "where": "requirements.txt:2"},
        {"name": "helper", "declared": "9.9.9", "shipped": "1.1.0", "where": "uv.lock"},
    ]


def test_pins_under_markers_apply_only_where_their_marker_holds(tmp_path: Path) -> None:
    from dify_repack.pins import preferences_for
    from dify_repack.targets import make_targets

    (tmp_path / "requirements.txt").write_text(
        "dify_plugin==0.7.4\nfastmath==1.0.0 ; platform_machine == 'aarch64'\nfastmath==2.0.0 ; platform_machine == 'x86_64'\n"
    )
    declared = declared_dependencies(tmp_path)
    amd64, arm64 = make_targets("3.12", ("amd64", "arm64"))
    assert preferences_for(declared.preferred, amd64)["fastmath"] == "2.0.0"
    assert preferences_for(declared.preferred, arm64)["fastmath"] == "1.0.0"


# The cache is checked by content, not trusted by name.

CORRUPTIONS = {"one-byte": b"x", "script": b"#!/bin/sh\necho owned > /tmp/owned\n"}


@pytest.mark.parametrize("refresh", [False, True], ids=["warm", "refresh"])
@pytest.mark.parametrize("content", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_a_corrupt_cached_wheel_is_dropped_and_fetched_again(setup: Setup, content: bytes, refresh: bool) -> None:
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": "dify_plugin==0.7.4\nhelper==1.0.0\n"})
    assert setup.pack(plugin).code == 0
    (cached,) = setup.cache.glob("files/*/*/helper-1.0.0-py3-none-any.whl")
    cached.write_bytes(content)
    for package in setup.out.iterdir():
        package.unlink()

    run = setup.pack(plugin, *(["--refresh"] if refresh else []))

    assert run.code == 0, run.err
    assert "helper-1.0.0-py3-none-any.whl did not match its sha256" in run.err
    expected = _wheel_sha256(setup.index, "helper-1.0.0-py3-none-any.whl")
    with zipfile.ZipFile(_package(setup.out)) as archive:
        shipped = archive.read("wheels/helper-1.0.0-py3-none-any.whl")
    assert hashlib.sha256(shipped).hexdigest() == expected
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == expected, "the entry was fetched again"


def test_a_corrupt_built_wheel_is_rebuilt(setup: Setup) -> None:
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": "dify_plugin==0.7.4\npuresdist\n"})
    assert setup.pack(plugin).code == 0
    (built,) = setup.cache.glob("built/**/puresdist-1.0.0-py3-none-any.whl")
    built.write_bytes(b"#!/bin/sh\n")
    for package in setup.out.iterdir():
        package.unlink()

    run = setup.pack(plugin)

    assert run.code == 0, run.err
    assert "puresdist-1.0.0-py3-none-any.whl did not match its sha256" in run.err
    assert "building puresdist" in run.err
    with (
        zipfile.ZipFile(_package(setup.out)) as archive,
        zipfile.ZipFile(archive.open("wheels/puresdist-1.0.0-py3-none-any.whl")) as wheel,
    ):
        assert "puresdist/__init__.py" in wheel.namelist()
    recorded = built.with_name(built.name + ".sha256").read_text().strip()
    assert hashlib.sha256(built.read_bytes()).hexdigest() == recorded, "the rebuilt wheel has its hash beside it"


# Index links as real indexes serve them.


@pytest.fixture
def torch_like_index(tmp_path: Path) -> Iterator[LocalIndex]:
    """An index whose links carry a query string and a percent-encoded local version, as the PyTorch one does."""
    with serve_index(tmp_path / "torch-index") as served:
        make_wheel(served.files, "dify_plugin", "0.7.4", files=FAKE_SDK_FILES, requires=("helper>=1",))
        make_wheel(served.files, "helper", "1.0.0")
        make_wheel(served.files, "localver", "1.0.0+cpu")
        served.publish()
        wheel = served.files / "localver-1.0.0+cpu-py3-none-any.whl"
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        href = f"/files/localver-1.0.0%2Bcpu-py3-none-any.whl?token=abc&expires=1#sha256={digest}"
        page = f'<html><body>\n<a href="{html.escape(href)}">localver-1.0.0+cpu-py3-none-any.whl</a>\n</body></html>\n'
        (served.root / "simple" / "localver" / "index.html").write_text(page)
        yield served


def test_links_with_a_query_and_an_encoded_local_version_are_packed(setup: Setup, torch_like_index: LocalIndex) -> None:
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": "dify_plugin==0.7.4\nlocalver==1.0.0+cpu\n"})
    run = setup.pack(plugin, index_url=torch_like_index.url)
    assert run.code == 0, run.err
    with zipfile.ZipFile(_package(setup.out)) as archive:
        assert "wheels/localver-1.0.0+cpu-py3-none-any.whl" in archive.namelist()
    assert "localver==1.0.0+cpu" in _pins(setup.out)


# Malformed files: clean errors (or notes), never exit 1.

PYPROJECT_HEAD = '[project]\nname = "demo"\nversion = "0.1.0"\n'
MALFORMED_PYPROJECTS = {
    "dependencies-a-string": (PYPROJECT_HEAD + 'dependencies = "dify_plugin"\n', "not a list"),
    "dependencies-a-table": (PYPROJECT_HEAD + "[project.dependencies]\ndify_plugin = '1'\n", "not a list"),
    "dependency-not-a-string": (PYPROJECT_HEAD + 'dependencies = ["dify_plugin", 3]\n', "dependencies[1]"),
    "requires-python-garbage": (
        PYPROJECT_HEAD + 'requires-python = ">=3.12,<<4"\ndependencies = ["dify_plugin"]\n',
        "requires-python",
    ),
    "requires-python-a-number": (
        PYPROJECT_HEAD + 'requires-python = 3.12\ndependencies = ["dify_plugin"]\n',
        "requires-python",
    ),
    "constraint-dependencies-a-string": (
        PYPROJECT_HEAD + 'dependencies = ["dify_plugin"]\n[tool.uv]\nconstraint-dependencies = "x"\n',
        "constraint-dependencies",
    ),
}


@pytest.mark.parametrize("text, needle", MALFORMED_PYPROJECTS.values(), ids=MALFORMED_PYPROJECTS.keys())
def test_a_malformed_pyproject_is_a_dependency_error(setup: Setup, text: str, needle: str) -> None:
    plugin = make_plugin(setup.tmp / "src", {"pyproject.toml": text})
    setup.assert_refused(setup.pack(plugin), 4, "pyproject.toml", needle)


MALFORMED_LOCKS = {
    "not-toml": "[[package]\nname =",
    "package-a-string": 'package = "x"\n',
    "entries-not-tables": "package = [1, 2]\n",
    "name-a-number": '[[package]]\nname = 1\nversion = "1"\nsource = { registry = "r" }\n',
    "bad-version": '[[package]]\nname = "helper"\nversion = "one"\nsource = { registry = "r" }\n',
    "bad-markers": '[[package]]\nname = "helper"\nversion = "1.0.0"\nresolution-markers = ["python_version >>"]\n'
    'source = { registry = "r" }\n',
}


@pytest.mark.parametrize("text", MALFORMED_LOCKS.values(), ids=MALFORMED_LOCKS.keys())
def test_a_malformed_uv_lock_is_a_note_and_the_pack_goes_on(setup: Setup, text: str) -> None:
    pyproject = PYPROJECT_HEAD + 'dependencies = ["dify_plugin==0.7.4"]\n'
    plugin = make_plugin(setup.tmp / "src", {"pyproject.toml": pyproject, "uv.lock": text})
    run = setup.pack(plugin)
    assert run.code == 0, run.err
    assert "uv.lock:" in run.err and "not preferred" in run.err


ODD_LINES = {
    "nul-byte": b"helper\x00evil",
    "invalid-utf8": b"helper\xff\xfe",
    "escape-sequence": b"helper \x1b[31mred",
    "very-long": b"helper==1.0 ; " + b"x" * 5000,
    "lone-continuation": b"helper \\",
    "nul-byte-in-an-include": b"-r a\x00b.txt",
    "nul-byte-in-a-constraint": b"--constraint=a\x00b.txt",
}


@pytest.mark.parametrize("line", ODD_LINES.values(), ids=ODD_LINES.keys())
def test_a_requirement_line_with_odd_bytes_is_a_clean_error(setup: Setup, line: bytes) -> None:
    plugin = make_plugin(setup.tmp / "src", {})
    (plugin / "requirements.txt").write_bytes(b"dify_plugin==0.7.4\n" + line + b"\n")
    run = setup.pack(plugin)
    if run.code == 0:
        return  # read as a valid requirement (the continuation case): nothing to refuse
    error = setup.assert_refused(run, 4, "requirements.txt:2:")
    assert "\x00" not in error and "\x1b" not in error
    assert len(error) < 400, "a plugin's line is shown shortened"


def test_a_byte_order_mark_is_not_part_of_the_first_name(tmp_path: Path) -> None:
    (tmp_path / "requirements.txt").write_bytes(b"\xef\xbb\xbfdify_plugin==0.7.4\n")
    assert [str(r) for r in declared_dependencies(tmp_path).requirements] == ["dify_plugin==0.7.4"]


@pytest.mark.parametrize("line", ["-r /proc/self/environ", "-c ../../../../proc/self/environ"], ids=["abs", "dotdot"])
def test_inspect_never_reads_an_include_outside_the_package(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, line: str
) -> None:
    monkeypatch.setenv("DIFY_TEST_TOKEN", TOKEN)
    root = make_plugin(tmp_path / "src", {"requirements.txt": f"--no-index\ndify_plugin==0.7.4\n{line}\n"})
    package = write_package(root, tmp_path / "demo.difypkg").path

    assert main(["inspect", "--json", str(package)]) == 0  # inspect reports problems, it does not fail on them
    out = capsys.readouterr().out
    assert TOKEN not in out
    problems = json.loads(out)["problems"]
    assert any(problem.startswith("requirements.txt:3:") and "outside the plugin" in problem for problem in problems)


def test_verify_refuses_to_replay_a_package_whose_includes_lead_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # pip and uv would follow the include and print the file's lines as invalid requirements.
    monkeypatch.setenv("DIFY_TEST_TOKEN", TOKEN)
    root = make_plugin(
        tmp_path / "src",
        {
            "requirements.txt": "--no-index\n-r more.txt\n",
            "more.txt": "dify_plugin==0.7.4\n--requirement=/proc/self/environ\n",
        },
    )
    package = write_package(root, tmp_path / "demo.difypkg").path

    assert main(["verify", str(package)]) == 4
    captured = capsys.readouterr()
    assert TOKEN not in captured.out + captured.err
    assert "error: more.txt:2: -r '/proc/self/environ' is outside the plugin folder" in captured.err
    assert "replaying" not in captured.err


INDEX_LINKS = {
    "query": ("https://h/files/a-1.0-py3-none-any.whl?X-Amz-Signature=s", "a-1.0-py3-none-any.whl"),
    "encoded-local-version": ("https://h/whl/cpu/torch-2.5.1%2Bcpu-cp312-cp312-linux_x86_64.whl#sha256=00", None),
    "relative-path": ("../../files/a-1.0.tar.gz", "a-1.0.tar.gz"),
}


@pytest.mark.parametrize("url, filename", INDEX_LINKS.values(), ids=INDEX_LINKS.keys())
def test_file_names_of_index_links_are_the_decoded_last_segment(url: str, filename: str | None) -> None:
    from dify_repack.resolve import _artifact

    expected = filename or "torch-2.5.1+cpu-cp312-cp312-linux_x86_64.whl"
    assert _artifact({"url": url}, "a").filename == expected


@pytest.mark.parametrize("segment", ["..%2F..%2Fevil-1.0-py3-none-any.whl", "%2E%2E", "a%00b.whl", "a%5Cb.whl"])
def test_an_index_link_whose_name_is_not_one_path_segment_is_refused(segment: str) -> None:
    from dify_repack.resolve import _artifact

    with pytest.raises(DependencyError, match="unusable name"):
        _artifact({"url": f"https://h/files/{segment}"}, "evil")


def test_a_requires_python_excluding_the_daemons_python_fails_before_any_download(setup: Setup) -> None:
    pyproject = PYPROJECT_HEAD + 'requires-python = "<3.12"\ndependencies = ["dify_plugin==0.7.4"]\n'
    plugin = make_plugin(setup.tmp / "src", {"pyproject.toml": pyproject})
    requests_before = len(setup.index.requests)
    setup.assert_refused(setup.pack(plugin), 4, "requires-python <3.12 excludes CPython 3.12")
    assert len(setup.index.requests) == requests_before


def test_a_marketplace_package_with_another_checksum_is_refused_and_removed(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The Marketplace (here a fake one) serves a package that is not the one the identifier names.
    plugin = make_plugin(setup.tmp / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    served = write_package(plugin, setup.tmp / "served.difypkg").path
    wanted = "cd" * 32
    with serve() as web:
        web.route("/api/v1/plugins/tester/demo/0.1.0/download", Reply(body=served.read_bytes()))
        monkeypatch.setenv("DIFY_MARKETPLACE_URL", web.url)
        run = setup.pack(Path(f"tester/demo:0.1.0@{wanted}"))
    error = setup.assert_refused(run, 6, wanted, zip_checksum(served))
    assert "tester/demo:0.1.0" in error


@pytest.mark.parametrize("matches", [True, False], ids=["sdist-hash", "other-hash"])
def test_a_wheel_built_here_is_checked_through_its_sdists_hash(setup: Setup, matches: bool) -> None:
    sdist = _wheel_sha256(setup.index, "puresdist-1.0.0.tar.gz") if matches else "ab" * 32
    plugin = make_plugin(
        setup.tmp / "src", {"requirements.txt": f"dify_plugin==0.7.4\npuresdist==1.0.0 --hash=sha256:{sdist}\n"}
    )
    run = setup.pack(plugin)
    if matches:
        assert run.code == 0, run.err
    else:
        setup.assert_refused(run, 4, "puresdist 1.0.0: its sdist puresdist-1.0.0.tar.gz matches none", ":2")

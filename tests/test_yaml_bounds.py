"""YAML from a package is parsed within bounds (yamlsafe.load_yaml): a bomb is refused in milliseconds.

Aliases are counted as if expanded, nesting and size are capped; the refusal is one line naming the file as
the user knows it, with the error class the caller chose (exit 3 for a manifest).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from builders import make_plugin, manifest_yaml
from dify_repack import yamlsafe
from dify_repack.errors import DependencyError, ExitCode, PackageError
from dify_repack.manifest import read_manifest
from dify_repack.package import write_package
from dify_repack.yamlsafe import load_yaml
from hostile import assert_refused, isolated_tmp, leftovers, run

BILLION_LAUGHS = "a: &a ['lol','lol','lol','lol','lol','lol','lol','lol','lol']\n" + "".join(
    f"{chr(98 + n)}: &{chr(98 + n)} [{','.join(['*' + chr(97 + n)] * 9)}]\n" for n in range(8)
)

# name -> (YAML text, what the message says)
BAD_YAML: dict[str, tuple[str, str]] = {
    "billion-laughs": (BILLION_LAUGHS, "alias bomb"),
    "billion-laughs-in-a-field": (manifest_yaml() + BILLION_LAUGHS.replace("\ni:", "\nversion_bomb:"), "alias bomb"),
    "recursive-alias": ("a: &a [*a]\n", "recursive"),
    "deep-nesting": ("a: " + "[" * 5000 + "]" * 5000 + "\n", "nested deeper than"),
    "deep-mappings": ("".join("  " * n + f"k{n}:\n" for n in range(200)) + "  " * 200 + "v\n", "nested deeper"),
    "huge-integer": ("version: " + "9" * 10_000 + "\n", "not valid YAML"),
    "invalid-syntax": ("a: [1, 2\n", "not valid YAML"),
    "python-tag": ("a: !!python/object/apply:os.system ['id']\n", "not valid YAML"),
}


def test_load_yaml_reads_ordinary_documents_and_modest_aliases() -> None:
    text = "base: &base {memory: 1}\ntools:\n  - *base\n  - *base\nversion: 0.1.0\n"
    assert load_yaml(text, where="m.yaml", error=PackageError) == {
        "base": {"memory": 1},
        "tools": [{"memory": 1}, {"memory": 1}],
        "version": "0.1.0",
    }
    assert load_yaml("", where="m.yaml", error=PackageError) is None


@pytest.mark.parametrize("case", BAD_YAML)
def test_bad_yaml_is_refused_quickly_with_the_callers_error(case: str) -> None:
    text, says = BAD_YAML[case]
    started = time.monotonic()
    with pytest.raises(DependencyError, match=says) as caught:
        load_yaml(text, where="app.yml", error=DependencyError)
    assert time.monotonic() - started < 0.5
    assert caught.value.message.startswith("app.yml: ") and "\n" not in caught.value.message


def test_size_is_capped_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(yamlsafe, "MAX_YAML_CHARS", 1000)
    with pytest.raises(PackageError, match="above the 1000 safety limit"):
        load_yaml("a: " + "x" * 2000, where="m.yaml", error=PackageError)


@pytest.mark.parametrize("case", ["billion-laughs-in-a-field", "recursive-alias", "deep-nesting"])
def test_a_manifest_bomb_fails_pack_and_inspect_in_well_under_a_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    folder = make_plugin(tmp_path / "in" / "plugin", {"manifest.yaml": BAD_YAML[case][0]})
    package = write_package(folder, tmp_path / "in" / "plugin.difypkg").path
    with isolated_tmp(tmp_path / "tmp", monkeypatch):
        for argv in (
            ["inspect", package],
            ["pack", folder, "--no-verify", "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache"],
            ["pack", package, "--no-verify", "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache"],
        ):
            started = time.monotonic()
            outcome = run(capsys, *argv)
            assert time.monotonic() - started < 1.0
            assert_refused(outcome, ExitCode.BAD_PACKAGE, argv[1], "manifest.yaml")
    assert leftovers(tmp_path / "out") == [] and leftovers(tmp_path / "cache") == []


def test_a_huge_manifest_is_never_read_whole(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dify_repack.manifest.MAX_YAML_CHARS", 1000)
    folder = make_plugin(tmp_path / "plugin", {"manifest.yaml": manifest_yaml() + "#" * 5000 + "\n"})
    with pytest.raises(PackageError, match=r"manifest\.yaml: larger than 1000 bytes"):
        read_manifest(folder)

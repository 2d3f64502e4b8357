"""Manifest fields become file and folder names: each is held to the daemon's own rule, then confined.

The daemon's rules (``plugin_entities``/``manifest_entities``): version ``^\\d{1,4}(\\.\\d{1,4}){2}(-\\w{1,16})?$``,
author ``^[a-z0-9_-]{1,64}$``, name ``^[a-z0-9_-]{1,128}$``; the entrypoint is run as ``python -m``; the icon
names a file under ``_assets/``. A field that breaks them is refused with exit 3 by pack, inspect and verify,
and nothing is written outside -o.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builders import make_plugin, manifest_yaml
from dify_repack.errors import ExitCode, PackageError
from dify_repack.manifest import Manifest, read_manifest
from dify_repack.package import write_package
from dify_repack.packing import output_path
from dify_repack.verify import _daemon_dir
from hostile import assert_refused, isolated_tmp, leftovers, run

GOOD = manifest_yaml()


def _with(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new, 1)


# name -> (manifest.yaml text, the field named in the error)
BAD_MANIFESTS: dict[str, tuple[str, str]] = {
    "version-traversal": (_with("version: 0.1.0", "version: 1.0.0-x/../../NAME"), "version"),
    "version-slash": (_with("version: 0.1.0", "version: 1.0.0/../../../tmp/x"), "version"),
    "version-two-parts": (_with("version: 0.1.0", "version: '1.0'"), "version"),
    "version-four-parts": (_with("version: 0.1.0", "version: 1.0.0.0"), "version"),
    "version-five-digits": (_with("version: 0.1.0", "version: 12345.0.0"), "version"),
    "version-empty-suffix": (_with("version: 0.1.0", "version: 1.0.0-"), "version"),
    "version-long-suffix": (_with("version: 0.1.0", "version: 1.0.0-abcdefghijklmnopq"), "version"),
    "version-non-ascii-suffix": (_with("version: 0.1.0", "version: 1.0.0-ünï"), "version"),
    "version-space": (_with("version: 0.1.0", "version: 1.0.0-a b"), "version"),
    "author-traversal": (_with("author: tester", "author: ../../x"), "author"),
    "author-upper": (_with("author: tester", "author: Tester"), "author"),
    "author-too-long": (_with("author: tester", "author: " + "a" * 65), "author"),
    "author-huge": (_with("author: tester", "author: " + "a" * 100_000), "author"),
    "version-huge": (_with("version: 0.1.0", "version: 1.0.0-" + "x" * 100_000), "version"),
    "author-uuid": (_with("author: tester", "author: 0f0e2b5c-1b2a-4c3d-9e8f-7a6b5c4d3e2f"), "author"),
    "author-list": (_with("author: tester", "author: [tester]"), "author"),
    "name-slash": (_with("name: demo", "name: a/b"), "name"),
    "name-dotdot": (_with("name: demo", "name: '..'"), "name"),
    "name-too-long": (_with("name: demo", "name: " + "n" * 129), "name"),
    "entrypoint-path": (_with("entrypoint: main", "entrypoint: ../main"), "entrypoint"),
    "entrypoint-dash": (_with("entrypoint: main", "entrypoint: my-main"), "entrypoint"),
    "entrypoint-shell": (_with("entrypoint: main", "entrypoint: 'main; rm -rf ~'"), "entrypoint"),
    "entrypoint-option": (_with("entrypoint: main", "entrypoint: -c"), "entrypoint"),
    "icon-traversal": (_with("icon: icon.svg", "icon: ../../../etc/passwd"), "icon"),
    "icon-absolute": (_with("icon: icon.svg", "icon: /etc/passwd"), "icon"),
    "icon-backslash": (_with("icon: icon.svg", "icon: 'a\\\\b.svg'"), "icon"),
    "meta-version": (_with("  version: 0.0.1", "  version: latest"), "meta.version"),
    "not-a-mapping": ("- just\n- a list\n", "mapping"),
}


def _plugin(directory: Path, manifest: str) -> Path:
    return make_plugin(directory, {"manifest.yaml": manifest, "requirements.txt": "dify_plugin==0.7.4\n"})


@pytest.mark.parametrize("case", BAD_MANIFESTS)
def test_bad_field_is_refused_by_pack_inspect_and_verify(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], case: str
) -> None:
    manifest, field = BAD_MANIFESTS[case]
    folder = _plugin(tmp_path / "work" / "plugin", manifest)
    package = write_package(folder, tmp_path / "work" / "plugin.difypkg").path
    out, cache = tmp_path / "work" / "a" / "b" / "out", tmp_path / "work" / "cache"
    unreachable = ("--index-url", "http://127.0.0.1:9/simple", "--cache-dir", cache)
    with isolated_tmp(tmp_path / "tmp", monkeypatch):
        for source in (folder, package):
            outcome = run(capsys, "pack", source, "--no-verify", "-o", out, *unreachable)
            assert_refused(outcome, ExitCode.BAD_PACKAGE, source, field)
        assert_refused(run(capsys, "inspect", package), ExitCode.BAD_PACKAGE, package, field)
        outcome = run(capsys, "verify", package, "--cache-dir", cache, "--uv", "0.9.13")
        assert_refused(outcome, ExitCode.BAD_PACKAGE, package, field)
    # Nothing anywhere: not in -o, not in the cache, not beside or above -o (where ../.. would lead).
    assert leftovers(tmp_path / "work") == sorted(
        str(p.relative_to(tmp_path / "work")) for p in [folder, package, *folder.rglob("*")]
    )


@pytest.mark.parametrize("version", ["0.0.1", "0.0.63", "1.2.3-beta_1", "1234.0.1", "3.6.6"])
def test_versions_the_daemon_accepts_pass(tmp_path: Path, version: str) -> None:
    folder = _plugin(tmp_path / "p", _with("version: 0.1.0", f"version: {version}"))
    assert read_manifest(folder).version == version


def test_output_is_one_file_name_inside_the_output_folder(tmp_path: Path) -> None:
    # Even a Manifest built past the rules (a library caller) cannot name a file outside -o.
    hostile = Manifest("tester", "demo", "1.0.0-x/../../NAME", ("amd64",), "3.12", "main")
    with pytest.raises(PackageError, match="not one file name"):
        output_path(hostile, tmp_path / "out")
    fine = Manifest("tester", "demo", "1.0.0", ("amd64",), "3.12", "main")
    assert output_path(fine, tmp_path / "out") == tmp_path / "out" / "tester-demo_1.0.0-offline.difypkg"


def test_verify_working_folders_stay_inside_their_temp(tmp_path: Path) -> None:
    hostile = Manifest("tester", "demo", "1.0.0-x/../../../NAME", ("amd64",), "3.12", "main")
    with pytest.raises(PackageError, match="outside"):
        _daemon_dir(tmp_path / "work", hostile, "pip-pip")
    fine = Manifest("tester", "demo", "1.0.0", ("amd64",), "3.12", "main")
    assert _daemon_dir(tmp_path / "work", fine, "pip-pip") == tmp_path / "work" / "tester" / "demo-1.0.0@pip-pip"

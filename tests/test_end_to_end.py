"""End to end from the public index: pack the example plugin, then replay every daemon profile offline."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from dify_repack.cli import main
from dify_repack.verify import PROFILES, VerifyOptions, verify_package

pytestmark = pytest.mark.network
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text_toolkit"


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the module, so that nothing comes from (or goes to) the user's own cache."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def offline_package(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> Path:
    """The example packed with the CLI's defaults, its own verification included."""
    out = tmp_path_factory.mktemp("out")
    code = main(["pack", str(EXAMPLE), "-o", str(out), "--cache-dir", str(cache), "--json", "-q"])
    assert code == 0
    return out / "dify-repack-text_toolkit_0.1.0-offline.difypkg"


def test_example_packs_with_native_pure_and_sdist_only_dependencies(offline_package: Path) -> None:
    with zipfile.ZipFile(offline_package) as archive:
        names = archive.namelist()
        requirements = archive.read("requirements.txt").decode()
    wheels = [name for name in names if name.startswith("wheels/")]
    assert any("pyyaml" in name.lower() and "x86_64" in name for name in wheels)
    assert any("pyyaml" in name.lower() and "aarch64" in name for name in wheels)
    assert any(name.startswith("wheels/tabulate-") and name.endswith("py3-none-any.whl") for name in wheels)
    assert "wheels/wikipedia-1.4.0-py3-none-any.whl" in wheels  # built from the sdist
    assert not any(name.endswith((".tar.gz", ".zip")) for name in names)
    assert "dify_plugin==0.7.4" in requirements.splitlines()
    assert {"pyproject.toml", "uv.lock", "requirements.txt"} <= set(names)


@pytest.mark.parametrize("uv_version", ["0.9.26", "latest"])
def test_every_daemon_profile_installs_offline_and_starts(offline_package: Path, uv_version: str, cache: Path) -> None:
    report = verify_package(offline_package, VerifyOptions(uv_versions=[uv_version], arches=["amd64"], cache_dir=cache))
    assert report.isolation.startswith("unshare")
    assert report.ok, json.dumps(report.to_json(), indent=1)
    replayed = {check.profile for check in report.checks if check.mode == "live"}
    assert replayed == set(PROFILES)
    for check in report.checks:
        assert [step.name for step in check.steps] == ["venv", "install", "compile", "import", "start"]
    commands = {check.profile: check.command for check in report.checks}
    assert commands["uv-sync-frozen"].startswith("uv sync --no-dev -v --frozen")
    assert "-i http://127.0.0.1:9/simple" in commands["mirror"]


def test_arm64_is_checked_statically_on_an_x86_host(offline_package: Path, cache: Path) -> None:
    report = verify_package(offline_package, VerifyOptions(arches=["arm64"], uv_versions=["latest"], cache_dir=cache))
    assert report.ok, json.dumps(report.to_json(), indent=1)
    assert {check.mode for check in report.checks} == {"static"}

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from builders import FAKE_SDK_FILES, LocalIndex, make_sdist, make_wheel, serve_index
from dify_repack import uvbin

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _no_inherited_settings(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The machine's pip/uv settings must not help or hinder: neither daemons nor users have them."""
    for key in list(os.environ):
        if key.startswith(("PIP_", "UV_")) or key in (
            "DIFY_REPACK_CACHE_DIR",
            "DIFY_MARKETPLACE_URL",
            "GITHUB_TOKEN",
        ):
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)


@pytest.fixture(scope="session")
def python312() -> Path:
    found = uvbin.find_python("3.12")
    if found is None:
        pytest.fail("these tests need CPython 3.12 on the host (.ci/run installs it)")
    return found


@pytest.fixture(scope="session")
def index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    """A local index with a small world of packages; see the README of tests for what each one exercises."""
    root = tmp_path_factory.mktemp("index")
    with serve_index(root) as served:
        files = served.files
        # A stand-in SDK, so that verify can import it and start a plugin without the real one.
        make_wheel(files, "dify_plugin", "0.7.4", files=FAKE_SDK_FILES, requires=("helper>=1",))
        make_wheel(files, "helper", "1.0.0")
        make_wheel(files, "helper", "1.1.0")
        # Native wheels per architecture; the newest version is published only as manylinux_2_28 wheels.
        for version, tags in (
            (
                "1.0.0",
                (
                    "cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64",
                    "cp312-cp312-manylinux2014_aarch64",
                ),
            ),
            ("2.0.0", ("cp312-cp312-manylinux_2_28_x86_64", "cp312-cp312-manylinux_2_28_aarch64")),
        ):
            for tag in tags:
                make_wheel(files, "fastmath", version, tag=tag)
        # A newer version with wheels for another Python only: must not be chosen for 3.12.
        make_wheel(files, "fastmath", "3.0.0", tag="cp313-cp313-manylinux_2_28_x86_64")
        make_wheel(files, "fastmath", "3.0.0", tag="cp313-cp313-manylinux_2_28_aarch64")
        # Markers the host must not decide: Windows-only, arm-only and Python-version-dependent needs.
        make_wheel(
            files,
            "multiplatform",
            "1.0.0",
            requires=(
                "winonly; sys_platform == 'win32'",
                "armonly; platform_machine == 'aarch64'",
                "oldpy; python_version < '3.12'",
            ),
        )
        make_wheel(files, "winonly", "1.0.0", tag="py3-none-win_amd64")
        make_wheel(files, "armonly", "1.0.0")
        make_wheel(files, "oldpy", "1.0.0")
        # Only sdists: pure, native (tagged for the building CPython), and one that needs a missing compiler.
        make_sdist(files, "puresdist", "1.0.0", mode="pure")
        make_sdist(files, "nativesdist", "1.0.0", mode="native")
        make_sdist(files, "needscompiler", "1.0.0", mode="broken")
        # x86_64 only: arm64 targets must fail with the package, version and target named.
        make_wheel(files, "x86only", "1.0.0", tag="cp312-cp312-manylinux_2_17_x86_64")
        # The newest version has an x86_64 wheel only: each architecture gets a different version.
        make_wheel(files, "divergent", "1.0.0", tag="cp312-cp312-manylinux_2_17_x86_64")
        make_wheel(files, "divergent", "1.0.0", tag="cp312-cp312-manylinux_2_17_aarch64")
        make_wheel(files, "divergent", "2.0.0", tag="cp312-cp312-manylinux_2_17_x86_64")
        # Published only for a newer glibc than the default target's.
        make_wheel(files, "newglibc", "1.0.0", tag="cp312-cp312-manylinux_2_34_x86_64")
        # Development tools, to show they are not needed offline.
        make_wheel(files, "devtool", "1.0.0")
        served.publish()
        yield served


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    return tmp_path / "cache"

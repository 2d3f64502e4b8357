"""Wheelhouse mode end to end from the public index: the example plugin and a second plugin sharing its
dependencies are packed slim into one wheelhouse; every daemon profile installs them offline from the wheelhouse
served at the mirror's address (uv 0.9.26 and the newest uv); then the same against a real devpi-server, after an
upload through ``dify-repack wheelhouse upload`` into an index with no bases (nothing public behind it).
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import socket
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from dify_repack.cli import main
from dify_repack.verify import PROFILES, VerifyOptions, verify_package
from dify_repack.wheelhouse import check_wheelhouse, read_wheelhouse

pytestmark = pytest.mark.network
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "text_toolkit"
MIRROR = "http://pypi.internal:8080/simple"
UV_VERSIONS = ["--uv", "0.9.26", "--uv", "latest"]
DEVPI_PASSWORD = "devpi-test-secret"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("wheelhouse-e2e")


@pytest.fixture(scope="module")
def second_plugin(work: Path) -> Path:
    """The example without wikipedia: the same SDK stack, pyyaml and tabulate, under another name."""
    plugin = work / "table_only"
    shutil.copytree(EXAMPLE, plugin)
    manifest = plugin / "manifest.yaml"
    manifest.write_text(manifest.read_text().replace("name: text_toolkit", "name: table_only"))
    for name in ("main.py", "requirements.txt", "pyproject.toml"):
        path = plugin / name
        lines = [line for line in path.read_text().splitlines(keepends=True) if "wikipedia" not in line]
        path.write_text("".join(lines).replace('name = "text-toolkit"', 'name = "table-only"'))
    return plugin


@pytest.fixture(scope="module")
def packed(work: Path, second_plugin: Path) -> dict[str, object]:
    """Both plugins packed slim with the CLI's defaults: each verified against the served wheelhouse."""
    out, cache = work / "slim", work / "cache"
    args = ["-o", str(out), "--cache-dir", str(cache), "--wheelhouse", str(work / "house"), "--mirror-url", MIRROR]
    documents = {}
    for source in (EXAMPLE, second_plugin):
        with contextlib.redirect_stdout(io.StringIO()) as stdout:
            code = main(["pack", str(source), *args, "--arch", "amd64", *UV_VERSIONS, "--json", "-q"])
        assert code == 0, stdout.getvalue()
        documents[source.name] = json.loads(stdout.getvalue())["results"][0]
    return documents


def test_one_wheelhouse_holds_each_shared_wheel_once(packed: dict[str, object], work: Path) -> None:
    house = read_wheelhouse(work / "house")
    first = set(house.plugins["dify-repack/text_toolkit:0.1.0"])
    second = set(house.plugins["dify-repack/table_only:0.1.0"])
    shared = first & second
    assert any(name.startswith("dify_plugin-0.7.4-") for name in shared)
    assert any(name.lower().startswith("pyyaml-") for name in shared)
    assert any(name.startswith("wikipedia-1.4.0-") for name in first - second)
    assert sorted(path.name for path in (work / "house" / "files").iterdir()) == sorted(house.files)
    assert check_wheelhouse(work / "house") == []


def test_every_profile_passed_offline_against_the_served_wheelhouse(packed: dict[str, object]) -> None:
    for document in packed.values():
        assert isinstance(document, dict)
        verification = document["verification"]
        # 5 profiles x (uv 0.9.26, newest uv), pip once, plus the static check that the wheelhouse has every file.
        assert verification["ok"] and verification["checks"] == 1 + 1 + 4 * 2, document
        assert "mirror" in verification["isolation"]
        assert document["compressed_bytes"] < 100_000


def test_slim_and_full_sizes(packed: dict[str, object], work: Path) -> None:
    package = work / "slim" / "dify-repack-text_toolkit_0.1.0-offline.difypkg"
    with zipfile.ZipFile(package) as archive:
        assert not any(name.startswith("wheels/") for name in archive.namelist())
        assert "pypi.internal" in archive.read("uv.lock").decode()


@contextlib.contextmanager
def devpi_on_host(serverdir: Path, port: int) -> Iterator[str]:
    """A real devpi-server on 127.0.0.1 with an index root/house that has no bases; yields its URL."""
    url = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(_devpi_server(serverdir, port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(url)
        reply = httpx.put(
            f"{url}/root/house",
            json={"type": "stage", "bases": [], "volatile": True},
            auth=("root", DEVPI_PASSWORD),
            headers={"Accept": "application/json"},
        )
        assert reply.is_success, reply.text
        yield url
    finally:
        server.terminate()
        server.wait(30)


def test_same_passes_against_a_real_devpi_after_an_upload(
    packed: dict[str, object], work: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    serverdir, port, house = work / "devpi", _free_port(), work / "house"
    init = [Path(sys.executable).parent / "devpi-init", "--serverdir", serverdir, "--root-passwd", DEVPI_PASSWORD]
    subprocess.run(init, check=True, capture_output=True)
    out = work / "devpi-slim"
    package = out / "dify-repack-text_toolkit_0.1.0-offline.difypkg"
    with devpi_on_host(serverdir, port) as url:
        repository = f"http://root:{DEVPI_PASSWORD}@127.0.0.1:{port}/root/house/"
        capsys.readouterr()
        assert main(["wheelhouse", "upload", str(house), "--repository-url", repository]) == 0
        printed = capsys.readouterr()
        assert DEVPI_PASSWORD not in printed.out + printed.err
        assert f"uploaded {len(read_wheelhouse(house).files)} files" in printed.out
        # The lock's file URLs are taken from devpi, whose layout is not the wheelhouse's files/.
        mirror = f"{url}/root/house/+simple/"
        args = ["-o", str(out), "--cache-dir", str(work / "cache"), "--wheelhouse", str(house), "--mirror-url", mirror]
        assert main(["pack", str(EXAMPLE), *args, "--arch", "amd64", "--lock-from-mirror", "--no-verify", "-q"]) == 0
    with zipfile.ZipFile(package) as archive:
        assert f"{url}/root/house/+f/" in archive.read("uv.lock").decode()

    # devpi itself serves the replays, restarted inside the namespace where nothing else is reachable.
    options = VerifyOptions(
        uv_versions=["0.9.26", "latest"],
        arches=["amd64"],
        cache_dir=work / "cache",
        mirror_server=tuple(map(str, _devpi_server(serverdir, port))),
    )
    report = verify_package(package, options)
    assert report.ok, json.dumps(report.to_json(), indent=1)
    assert {check.profile for check in report.checks if check.mode == "live"} == set(PROFILES)


def _devpi_server(serverdir: Path, port: int) -> list[str]:
    server = Path(sys.executable).parent / "devpi-server"
    return [str(server), "--serverdir", str(serverdir), "--host", "127.0.0.1", "--port", str(port), "--offline-mode"]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_for(url: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/+api", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    pytest.fail(f"devpi-server did not answer at {url}")

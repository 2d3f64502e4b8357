"""The plugin identifier ``author/name:version@checksum``: the checksum is the daemon's (DAEMON-FACTS §1).

The daemon hashes the raw 32-byte digests sha256(path) + sha256(content), entries sorted by path; the test
vector pins that, and every place that names an identifier (inspect, verify, pack) is checked against it.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest

from builders import CHECKSUM_VECTOR, CHECKSUM_VECTOR_SUM, LocalIndex, daemon_checksum, make_plugin
from dify_repack.inspect import inspect_package
from dify_repack.package import plugin_checksum, write_package, zip_checksum
from dify_repack.packing import PackOptions, pack
from dify_repack.resolve import Indexes
from dify_repack.signing import generate_keypair
from dify_repack.verify import VerifyOptions, verify_package
from hostile import run


def _vector_zip(path: Path) -> Path:
    # Written out of order on purpose: the checksum sorts by path, whatever the zip order.
    with zipfile.ZipFile(path, "w") as archive:
        for name in ("wheels/x.whl", "manifest.yaml", "main.py"):
            archive.writestr(name, CHECKSUM_VECTOR[name])
    return path


def test_plugin_checksum_matches_the_daemon_test_vector() -> None:
    entries = [(name, hashlib.sha256(data).hexdigest()) for name, data in CHECKSUM_VECTOR.items()]
    assert plugin_checksum(entries) == CHECKSUM_VECTOR_SUM


def test_hex_strings_give_the_wrong_identifier() -> None:
    # What the tool computed before: the daemon 0.6.10 reported another identifier for the same package.
    wrong = hashlib.sha256()
    for name, data in sorted(CHECKSUM_VECTOR.items()):
        wrong.update(hashlib.sha256(name.encode()).hexdigest().encode())
        wrong.update(hashlib.sha256(data).hexdigest().encode())
    assert wrong.hexdigest().startswith("56cab65d")
    assert wrong.hexdigest() != CHECKSUM_VECTOR_SUM


def test_zip_checksum_and_the_test_helper_match_the_vector(tmp_path: Path) -> None:
    package = _vector_zip(tmp_path / "vector.difypkg")
    assert zip_checksum(package) == CHECKSUM_VECTOR_SUM
    assert daemon_checksum(package) == CHECKSUM_VECTOR_SUM  # the helper the other tests compare with


def test_written_packages_carry_the_checksum(tmp_path: Path) -> None:
    root = tmp_path / "tree"
    for name, data in CHECKSUM_VECTOR.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    stats = write_package(root, tmp_path / "out.difypkg")
    assert stats.checksum == CHECKSUM_VECTOR_SUM == zip_checksum(stats.path)


def _plugin_package(tmp_path: Path) -> Path:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    return write_package(plugin, tmp_path / "demo.difypkg").path


def test_inspect_names_the_daemons_identifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = _plugin_package(tmp_path)
    expected = f"tester/demo:0.1.0@{daemon_checksum(package)}"
    assert inspect_package(package).identifier == expected
    outcome = run(capsys, "inspect", package, "--json")
    document = json.loads(outcome.out)
    assert (document["identifier"], document["checksum"]) == (expected, daemon_checksum(package))
    assert expected in run(capsys, "inspect", package).out


def test_verify_report_names_the_daemons_identifier(tmp_path: Path) -> None:
    package = _plugin_package(tmp_path)
    options = VerifyOptions(profiles=(), uv_versions=(), cache_dir=tmp_path / "cache")
    report = verify_package(package, options)
    assert report.identifier == f"tester/demo:0.1.0@{daemon_checksum(package)}"


@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_pack_result_names_the_daemons_identifier(
    tmp_path: Path, index: LocalIndex, signed: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    key = generate_keypair(tmp_path / "keys" / "k", bits=2048)[0] if signed else None
    options = PackOptions(
        output_dir=tmp_path / "out", indexes=Indexes(index.url), cache_dir=tmp_path / "cache", sign_key=key
    )
    result = pack(plugin, options)
    assert result.identifier == f"tester/demo:0.1.0@{daemon_checksum(result.output)}"
    argv = ["pack", plugin, "--no-verify", "--json", "-o", tmp_path / "cli", "--index-url", index.url]
    document = json.loads(run(capsys, *argv, "--cache-dir", tmp_path / "cache").out)
    written = Path(document["results"][0]["output"])
    assert document["results"][0]["identifier"] == f"tester/demo:0.1.0@{daemon_checksum(written)}"

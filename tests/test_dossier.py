"""The transfer dossier: an SBOM and an HTML report that describe exactly what crosses the air gap."""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from builders import FAKE_SDK_FILES, LocalIndex, make_plugin, make_sdist, make_wheel, manifest_yaml, serve_index
from dify_repack.cli import main
from dify_repack.licenses import license_of
from dify_repack.package import zip_checksum

GPL = "Classifier: License :: OSI Approved :: GNU General Public License v3 (GPLv3)"


@pytest.fixture(scope="module")
def licensed_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    """Wheels declaring their license in each way metadata allows, and one declaring none."""
    with serve_index(tmp_path_factory.mktemp("licensed")) as index:
        files = index.files
        make_wheel(files, "dify_plugin", "0.7.4", files=FAKE_SDK_FILES, metadata=("License-Expression: Apache-2.0",))
        make_wheel(files, "permissive", "1.0.0", metadata=("Classifier: License :: OSI Approved :: MIT License",))
        make_wheel(files, "copyleft", "2.0.0", metadata=(GPL,))
        make_wheel(files, "unlicensed", "0.3.0")
        make_sdist(files, "puresdist", "1.0.0", mode="pure")
        make_wheel(
            files, "native", "1.0.0", tag="cp312-cp312-manylinux_2_17_x86_64", metadata=("License: BSD-3-Clause",)
        )
        make_wheel(
            files, "native", "1.0.0", tag="cp312-cp312-manylinux_2_17_aarch64", metadata=("License: BSD-3-Clause",)
        )
        index.publish()
        yield index


def _pack_argv(tmp_path: Path, index: LocalIndex, cache: Path | None = None) -> tuple[Path, Path, Path, list[str]]:
    """`pack` of a two-architecture plugin needing every kind of wheel above, writing both documents."""
    plugin = make_plugin(
        tmp_path / "src",
        {
            "manifest.yaml": manifest_yaml(arch=("amd64", "arm64")),
            "requirements.txt": "dify_plugin==0.7.4\npermissive\ncopyleft\nunlicensed\nnative\npuresdist\n",
        },
    )
    out, sbom, report = tmp_path / "out", tmp_path / "review" / "sbom.cdx.json", tmp_path / "review" / "report.html"
    argv = [
        "pack",
        str(plugin),
        "-o",
        str(out),
        "--index-url",
        index.url,
        "--cache-dir",
        str(cache or tmp_path / "cache"),
    ]
    argv += ["--no-verify", "--sbom", str(sbom), "--report", str(report)]
    return out, sbom, report, argv


def _run_pack(
    tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str], cache: Path | None = None
) -> tuple[Path, Path, Path]:
    out, sbom, report, argv = _pack_argv(tmp_path, index, cache)
    assert main([*argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["documents"] == [str(sbom), str(report)]
    return next(out.glob("*.difypkg")), sbom, report


def _listed(components: list[dict[str, Any]]) -> dict[str, str]:
    """Package path -> sha256 of what SBOM components list (wheels carry their path as a property)."""
    listed = {}
    for component in components:
        props = {p["name"]: p["value"] for p in component.get("properties", [])}
        listed[props.get("dify-repack:path", component["name"])] = component["hashes"][0]["content"]
    return listed


def _entries(package: Path) -> dict[str, str]:
    with zipfile.ZipFile(package) as archive:
        return {name: hashlib.sha256(archive.read(name)).hexdigest() for name in archive.namelist()}


def test_sbom_validates_and_lists_exactly_the_shipped_files_with_their_hashes(
    tmp_path: Path, licensed_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    package, sbom, _ = _run_pack(tmp_path, licensed_index, capsys)
    text = sbom.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    root = document["metadata"]["component"]
    identifier = f"tester/demo:0.1.0@{zip_checksum(package)}"
    assert root["bom-ref"] == identifier
    assert {"name": "dify-repack:identifier", "value": identifier} in root["properties"]
    assert _listed(document["components"]) == _entries(package)
    wheels = [c for c in document["components"] if c["type"] == "library"]
    assert {c["purl"].split("?")[0] for c in wheels} >= {"pkg:pypi/copyleft@2.0.0", "pkg:pypi/native@1.0.0"}
    native = [c for c in wheels if c["name"] == "native"]
    assert len(native) == 2  # one wheel per architecture, each with its own file name and target
    targets = {p["value"] for c in native for p in c["properties"] if p["name"] == "dify-repack:targets"}
    assert targets == {"cp312-linux-amd64", "cp312-linux-arm64"}
    for component in wheels:
        props = {p["name"]: p["value"] for p in component["properties"]}
        assert props["dify-repack:download-url"].startswith(licensed_index.url.removesuffix("/simple"))
        built = component["name"] == "puresdist"
        assert props["dify-repack:built-from-sdist"] == str(built).lower()
        assert props["dify-repack:download-url"].endswith(".tar.gz" if built else ".whl")


def test_licenses_map_to_spdx_and_the_ones_needing_review_are_flagged_everywhere(
    tmp_path: Path, licensed_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    _, sbom, report, argv = _pack_argv(tmp_path, licensed_index)
    assert main(argv) == 0
    summary = capsys.readouterr().out
    assert "copyleft 2.0.0: GPL-3.0-only — GPL family" in summary
    assert "unlicensed 0.3.0: unknown — no license declared" in summary
    assert "permissive" not in summary.split("license")[-1]
    document = json.loads(sbom.read_text())
    licenses = {c["name"]: c.get("licenses", []) for c in document["components"] if c["type"] == "library"}
    assert licenses["permissive"] == [{"license": {"id": "MIT"}}]
    assert licenses["dify-plugin"] == [{"license": {"id": "Apache-2.0"}}]
    assert licenses["copyleft"] == [{"license": {"id": "GPL-3.0-only"}}]
    assert licenses["native"] == [{"license": {"id": "BSD-3-Clause"}}]
    assert licenses["unlicensed"] == []
    flagged = {
        c["name"]
        for c in document["components"]
        if any(p["name"] == "dify-repack:license-attention" for p in c.get("properties", []))
    }
    assert flagged == {"copyleft", "unlicensed", "puresdist"}  # the sdist built here declares none either
    html = report.read_text()
    assert html.count('class="flag"') >= 4  # each flagged wheel, in the attention list and in the table


@pytest.mark.parametrize(
    ("headers", "expected", "flagged"),
    [
        (["License-Expression: MIT OR Apache-2.0"], "MIT OR Apache-2.0", False),
        (["License: Apache 2.0"], "Apache-2.0", False),
        (["License: GNU Affero General Public License v3"], "GNU Affero General Public License v3", True),
        (
            ["Classifier: License :: OSI Approved :: GNU Lesser General Public License v3 (LGPLv3)"],
            "LGPL-3.0-only",
            True,
        ),
        (["License: UNKNOWN"], "", True),
        (["Classifier: License :: OSI Approved :: BSD License"], "BSD License", False),
    ],
)
def test_license_metadata_forms(headers: list[str], expected: str, flagged: bool) -> None:
    from email.parser import HeaderParser

    license = license_of(HeaderParser().parsestr("\n".join(headers) + "\n"))
    assert license.text == expected
    assert bool(license.attention) is flagged


def test_report_names_the_identifier_and_every_wheel_and_is_self_contained(
    tmp_path: Path, licensed_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    package, _, report = _run_pack(tmp_path, licensed_index, capsys)
    html = report.read_text()
    assert f"tester/demo:0.1.0@{zip_checksum(package)}" in html
    for name in _entries(package):
        if name.endswith(".whl"):
            assert hashlib.sha256(zipfile.ZipFile(package).read(name)).hexdigest() in html
    assert "<script" not in html and "src=" not in html and "http" not in html.split("<body>")[0]
    assert "dify-repack verify " in html and "dify-repack inspect " in html


def test_documents_are_byte_identical_across_runs_and_from_inspect(
    tmp_path: Path, licensed_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    # One cache, as on an operator's machine: a wheel built from an sdist is built once (builds embed times).
    package, sbom, report = _run_pack(tmp_path / "one", licensed_index, capsys, tmp_path / "cache")
    again, sbom2, report2 = _run_pack(tmp_path / "two", licensed_index, capsys, tmp_path / "cache")
    assert package.read_bytes() == again.read_bytes()
    assert sbom.read_bytes() == sbom2.read_bytes()
    assert report.read_bytes() == report2.read_bytes()
    # inspect writes the same documents for any package, minus what only the packing run knew (origins).
    first, second = tmp_path / "i1.json", tmp_path / "i2.json"
    for target in (first, second):
        assert main(["inspect", str(package), "--sbom", str(target), "--report", str(target.with_suffix(".html"))]) == 0
    assert first.read_bytes() == second.read_bytes()
    assert first.with_suffix(".html").read_bytes() == second.with_suffix(".html").read_bytes()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(first.read_text()) is None


def test_report_renders_in_a_real_browser_without_errors_or_requests(
    tmp_path: Path, licensed_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("this test needs Debian's chromium (.ci/run installs it)")
    from playwright.sync_api import sync_playwright

    package, _, report = _run_pack(tmp_path, licensed_index, capsys)
    wheels = sum(name.endswith(".whl") for name in _entries(package))
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update"],
        )
        page = browser.new_page()
        console: list[str] = []
        requests: list[str] = []
        page.on("console", lambda message: console.append(f"{message.type}: {message.text}"))
        page.on("request", lambda request: requests.append(request.url))
        page.goto(report.as_uri())
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        assert page.title() == "Transfer dossier: tester/demo 0.1.0"
        wheel_rows = page.locator("h3:text('Wheels') + table tr").count() - 1
        chart_bars = page.locator("svg rect").count()
        browser.close()
    assert wheel_rows == wheels
    assert chart_bars == len({name.split("/")[-1].split("-")[0] for name in _entries(package) if name.endswith(".whl")})
    assert console == []
    assert requests == [report.as_uri()]
    assert (tmp_path / "report.png").stat().st_size > 10_000


def test_a_bundle_is_the_root_of_its_documents_with_every_plugin_inside(
    tmp_path: Path, licensed_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    first, _, _ = _run_pack(tmp_path / "one", licensed_index, capsys, tmp_path / "cache")
    plugin = make_plugin(
        tmp_path / "other",
        {"manifest.yaml": manifest_yaml(name="other"), "requirements.txt": "dify_plugin==0.7.4\npermissive\n"},
    )
    out = tmp_path / "out2"
    argv = ["pack", str(plugin), "-o", str(out), "--index-url", licensed_index.url, "--no-verify"]
    assert main([*argv, "--cache-dir", str(tmp_path / "cache"), "-q"]) == 0
    second = next(out.glob("*.difypkg"))
    bundle, sbom, report = tmp_path / "all.difybndl", tmp_path / "all.cdx.json", tmp_path / "all.html"
    capsys.readouterr()
    argv = ["bundle", str(first), str(second), "-o", str(bundle), "--sbom", str(sbom), "--report", str(report)]
    assert main([*argv, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["documents"] == [str(sbom), str(report)]

    text = sbom.read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(text) is None
    document = json.loads(text)
    root = document["metadata"]["component"]
    bundle_sha256 = hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert root["hashes"][0]["content"] == bundle_sha256
    identifiers = {f"tester/demo:0.1.0@{zip_checksum(first)}", f"tester/other:0.1.0@{zip_checksum(second)}"}
    assert {plugin["bom-ref"] for plugin in document["components"]} == identifiers
    for package, plugin in zip((first, second), sorted(document["components"], key=lambda c: c["name"]), strict=True):
        assert _listed(plugin["components"]) == _entries(package)
    html = report.read_text()
    assert all(identifier in html for identifier in identifiers) and bundle.name in html and bundle_sha256 in html

    # inspect of the bundle writes the same documents.
    again = tmp_path / "again.cdx.json"
    assert main(["inspect", str(bundle), "--sbom", str(again), "-q"]) == 0
    assert again.read_bytes() == sbom.read_bytes()

"""Fleet moves: app DSLs as sources, each plugin packed once, bundles, and the DSL offline copies.

A fake Marketplace and a fake GitHub on 127.0.0.1 serve plugin packages built here; packing resolves against
the local index of tiny wheels. Nothing leaves the machine.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from builders import LocalIndex, daemon_checksum, make_plugin, manifest_yaml
from dify_repack.bundle import read_bundle
from dify_repack.cli import main
from dify_repack.package import write_package, zip_checksum
from dify_repack.runner import run
from dify_repack.uvbin import uv_bin
from fakeweb import FakeWeb, Reply, serve

REQUIREMENTS = {"requirements.txt": "dify_plugin==0.7.4\n"}
CHECKSUM = "c0" * 32  # of a package nobody has


def plugin_package(directory: Path, name: str, *, author: str = "tester", version: str = "0.1.0") -> Path:
    """An original (not offline) plugin package, as the Marketplace or a release serves it."""
    manifest = manifest_yaml(name=name, version=version).replace("author: tester", f"author: {author}")
    source = make_plugin(directory / f"{author}-{name}-src", {**REQUIREMENTS, "manifest.yaml": manifest})
    return write_package(source, directory / f"{author}-{name}_{version}.difypkg").path


def marketplace(identifier: str) -> dict[str, Any]:
    return {
        "current_identifier": None,
        "type": "marketplace",
        "value": {"marketplace_plugin_unique_identifier": identifier, "version": None},
    }


def github(identifier: str, repo: str, tag: str, asset: str) -> dict[str, Any]:
    value = {"repo": repo, "version": tag, "package": asset, "github_plugin_unique_identifier": identifier}
    return {"current_identifier": None, "type": "github", "value": value}


def package(identifier: str) -> dict[str, Any]:
    return {"current_identifier": None, "type": "package", "value": {"plugin_unique_identifier": identifier}}


def write_dsl(path: Path, dependencies: list[Any], *, version: str = "0.3.0") -> Path:
    """An app DSL as Dify exports it (yaml.dump: sorted keys), with a workflow that uses the plugins."""
    document = {
        "app": {"description": "", "icon": "🤖", "icon_type": "emoji", "mode": "workflow", "name": path.stem},
        "dependencies": dependencies,
        "kind": "app",
        "version": version,
        "workflow": {
            "environment_variables": [],
            "features": {"file_upload": {"enabled": False}},
            "graph": {"edges": [], "nodes": [{"data": {"type": "tool", "provider_id": "tester/demo/demo"}}]},
        },
    }
    path.write_text(yaml.dump(document, allow_unicode=True), encoding="utf-8")
    return path


@pytest.fixture
def served(tmp_path: Path) -> dict[str, Path]:
    return {name: plugin_package(tmp_path / "served", name) for name in ("demo", "other")}


@pytest.fixture
def ids(served: dict[str, Path]) -> dict[str, str]:
    """The identifiers a connected Dify shows for the served packages, as its DSL exports name them."""
    return {name: f"tester/{name}:0.1.0@{zip_checksum(path)}" for name, path in served.items()}


@pytest.fixture
def web(served: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWeb]:
    """A fake Marketplace and GitHub: ``demo`` from the Marketplace, ``other`` as a release asset."""
    with serve() as server:
        server.route("/api/v1/plugins/tester/demo/0.1.0/download", Reply(body=served["demo"].read_bytes()))
        server.route(
            "/tester/other-plugin/releases/download/v0.1.0/other.difypkg", Reply(body=served["other"].read_bytes())
        )
        monkeypatch.setenv("GITHUB_URL", server.url)
        yield server


def pack_args(index: LocalIndex, web: FakeWeb, out: Path, cache: Path) -> list[str]:
    return ["-o", str(out), "--index-url", index.url, "--cache-dir", str(cache), "--marketplace-url", web.url]


def payload(capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    return json.loads(capsys.readouterr().out)  # type: ignore[no-any-return]


# DSLs as sources


def test_two_apps_sharing_a_plugin_get_it_packed_once_with_every_dependency_kind(
    tmp_path: Path,
    index: LocalIndex,
    cache_dir: Path,
    web: FakeWeb,
    ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    shelf = tmp_path / "shelf"
    private = plugin_package(shelf, "private")
    app1 = write_dsl(
        tmp_path / "app1.yml",
        [
            marketplace(ids["demo"]),
            github(ids["other"], "tester/other-plugin", "v0.1.0", "other.difypkg"),
        ],
    )
    app2 = write_dsl(
        tmp_path / "app2.yaml",
        [marketplace(ids["demo"]), package(f"tester/private:0.1.0@{zip_checksum(private)}")],
    )
    originals = {path: path.read_bytes() for path in (app1, app2)}
    out = tmp_path / "out"
    argv = ["pack", str(app1), str(app2), *pack_args(index, web, out, cache_dir), "--packages-dir", str(shelf)]
    code = main([*argv, "--bundle", str(out / "plugins.difybndl"), "--no-verify", "--json"])
    document = payload(capsys)

    assert code == 0, document
    assert document["command"] == "pack" and document["status"] == "success"
    by_plugin = {result["plugin"]: result for result in document["results"]}
    assert sorted(by_plugin) == ["tester/demo", "tester/other", "tester/private"]
    shared = by_plugin["tester/demo"]
    assert shared["sources"] == [f"{app1}: dependencies[0]", f"{app2}: dependencies[0]"]
    assert shared["dsls"] == [str(app1), str(app2)]
    assert len(web.seen("/api/v1/plugins/tester/demo/0.1.0/download")) == 1, "one download for both apps"
    assert len(web.seen("/tester/other-plugin/releases/download/v0.1.0/other.difypkg")) == 1
    assert sorted(Path(path).name for path in document["outputs"]["packages"]) == [
        "tester-demo_0.1.0-offline.difypkg",
        "tester-other_0.1.0-offline.difypkg",
        "tester-private_0.1.0-offline.difypkg",
    ]
    assert [copy["copy"] for copy in document["outputs"]["dsl_copies"]] == [
        str(out / "app1.offline.yml"),
        str(out / "app2.offline.yaml"),
    ]
    assert {path: path.read_bytes() for path in originals} == originals, "the DSLs themselves are never modified"
    assert any(line.startswith("FORCE_VERIFYING_SIGNATURE=false") for line in document["settings"])


def test_the_offline_copy_names_the_embedded_packages_and_keeps_the_rest(
    tmp_path: Path,
    index: LocalIndex,
    cache_dir: Path,
    web: FakeWeb,
    ids: dict[str, str],
    capsys: pytest.CaptureFixture[str],
) -> None:
    dsl = write_dsl(tmp_path / "app.yml", [marketplace(ids["demo"])], version="0.5.0")
    data = yaml.safe_load(dsl.read_text())
    data["dependencies"][0]["current_identifier"] = ids["demo"]
    dsl.write_text(yaml.dump(data, allow_unicode=True))
    out = tmp_path / "out"
    bundle = tmp_path / "apps.difybndl"
    argv = ["pack", str(dsl), *pack_args(index, web, out, cache_dir), "--bundle", str(bundle), "--no-verify"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "app.offline.yml" in printed and "import this copy" in printed

    copy = yaml.safe_load((out / "app.offline.yml").read_text(encoding="utf-8"))
    with zipfile.ZipFile(bundle) as archive:
        embedded = [name for name in archive.namelist() if name.startswith("_assets/") and name != "_assets/icon.svg"]
        (tmp_path / "embedded.difypkg").write_bytes(archive.read(embedded[0]))
    checksum = daemon_checksum(tmp_path / "embedded.difypkg")
    assert embedded == [f"_assets/{checksum}"]
    identifier = f"tester/demo:0.1.0@{checksum}"
    value = {"plugin_unique_identifier": identifier, "version": None}  # the entry's own keys are kept
    assert copy["dependencies"] == [{"current_identifier": identifier, "type": "package", "value": value}]
    assert checksum == zip_checksum(out / "tester-demo_0.1.0-offline.difypkg")
    original = yaml.safe_load(dsl.read_text(encoding="utf-8"))
    assert {k: v for k, v in copy.items() if k != "dependencies"} == {
        k: v for k, v in original.items() if k != "dependencies"
    }
    assert list(copy) == list(original), "keys keep their order"


def test_a_package_entry_without_its_file_says_supply_it_and_the_rest_goes_on(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, web: FakeWeb, capsys: pytest.CaptureFixture[str]
) -> None:
    dsl = write_dsl(
        tmp_path / "app.yml", [package(f"tester/private:0.1.0@{CHECKSUM}"), marketplace("tester/demo:0.1.0")]
    )
    out = tmp_path / "out"
    bundle = out / "plugins.difybndl"
    argv = ["pack", str(dsl), *pack_args(index, web, out, cache_dir), "--bundle", str(bundle), "--no-verify"]
    assert main([*argv, "--json"]) == 10
    document = payload(capsys)
    assert document["status"] == "partial"
    missing, packed = document["results"]
    assert missing["status"] == "error" and missing["exit_code"] == 2
    assert "supply that file" in missing["error"] and f"{dsl}: dependencies[0]" in missing["error"]
    assert packed["status"] == "success"
    assert document["outputs"]["bundle"] is None and "1 of 2 plugins failed" in document["bundle_skipped"]
    assert document["outputs"]["dsl_copies"][0]["copy"] is None
    assert sorted(path.name for path in out.iterdir()) == ["tester-demo_0.1.0-offline.difypkg"]


def test_a_failed_plugin_of_a_batch_is_shown_at_once_with_its_tip(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, web: FakeWeb, capsys: pytest.CaptureFixture[str]
) -> None:
    dsl = write_dsl(tmp_path / "app.yml", [package(f"tester/private:0.1.0@{CHECKSUM}")])
    assert main(["pack", str(dsl), *pack_args(index, web, tmp_path / "out", cache_dir), "--no-verify"]) == 2
    lines = capsys.readouterr().err.splitlines()
    error = next(number for number, line in enumerate(lines) if line.startswith("error: "))
    assert f"{dsl}: dependencies[0]" in lines[error] and "supply that file" in lines[error]
    assert lines[error + 1] == "tip: put the plugin's .difypkg in a folder and pass it with --packages-dir DIR"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("- just\n- a list\n", "not a Dify app DSL (the YAML is not a mapping)"),
        ("kind: rag_pipeline\nversion: 0.1.0\n", "not a Dify app DSL (kind: rag_pipeline)"),
        ("name: x\nvalues: [1]\n", "not a Dify app DSL (no kind: app and no app section)"),
        ("kind: app\napp: {mode: chat}\ndependencies: {a: 1}\n", "dependencies is not a list"),
        ("kind: app\ndependencies:\n  - {type: remote, value: {}}\n", "dependencies[0]: unknown dependency shape"),
        (
            "kind: app\ndependencies:\n  - {type: marketplace, value: {plugin_unique_identifier: a/b:1.0.0}}\n",
            "dependencies[0]: value.marketplace_plugin_unique_identifier: None is not a plugin identifier",
        ),
        (
            "kind: app\ndependencies:\n  - {type: package, value: {plugin_unique_identifier: 'openai@1'}}\n",
            "dependencies[0]: value.plugin_unique_identifier: 'openai@1' is not a plugin identifier",
        ),
        (
            "kind: app\ndependencies:\n  - {type: github, value: {github_plugin_unique_identifier: 'a/b:1.0.0'}}\n",
            "dependencies[0]: a github dependency needs value.repo",
        ),
        ("kind: app\napp: [unclosed\n", "not valid YAML"),
    ],
)
def test_a_malformed_dsl_is_one_error_naming_file_and_entry(
    tmp_path: Path, content: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    dsl = tmp_path / "app.yml"
    dsl.write_text(content)
    out = tmp_path / "out"
    assert main(["pack", str(dsl), "-o", str(out), "--no-verify"]) == 2
    error = capsys.readouterr().err
    assert f"error: {dsl}: " in error and message in " ".join(error.split())
    assert "Traceback" not in error
    assert not out.exists(), "nothing is written"


def test_an_old_dsl_without_dependencies_in_a_source_list_is_said_and_copied(
    tmp_path: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    write_dsl(tmp_path / "old.yml", [], version="0.1.2")
    listing = tmp_path / "apps.txt"
    listing.write_text("old.yml  # a DSL in a source list, relative to the list\n")
    out = tmp_path / "out"
    assert main(["pack", "-r", str(listing), "-o", str(out), "--cache-dir", str(cache_dir), "--no-verify"]) == 0
    assert "lists no plugin dependencies (DSL 0.1.2)" in capsys.readouterr().err
    assert (out / "old.offline.yml").is_file()


# Deduplication across all kinds of sources


def test_a_folder_and_a_marketplace_id_of_one_version_are_packed_once(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, web: FakeWeb, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = make_plugin(tmp_path / "demo", REQUIREMENTS)
    out = tmp_path / "out"
    argv = ["pack", str(folder), "tester/demo:0.1.0", *pack_args(index, web, out, cache_dir), "--no-verify"]
    assert main([*argv, "--json"]) == 0
    (result,) = payload(capsys)["results"]
    assert result["sources"] == [str(folder), "tester/demo:0.1.0"]


def test_two_plugins_claiming_one_output_file_is_an_error_for_the_second(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # author "a-b" + name "c" and author "a" + name "b-c" both make a-b-c_0.1.0-offline.difypkg
    first = make_plugin(
        tmp_path / "first", {**REQUIREMENTS, "manifest.yaml": manifest_yaml(name="c").replace("tester", "a-b")}
    )
    second = make_plugin(
        tmp_path / "second", {**REQUIREMENTS, "manifest.yaml": manifest_yaml(name="b-c").replace("tester", "a")}
    )
    out = tmp_path / "out"
    argv = ["pack", str(first), str(second), "-o", str(out), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    assert main([*argv, "--no-verify", "--json"]) == 10
    ok, refused = payload(capsys)["results"]
    assert ok["status"] == "success" and ok["plugin"] == "a-b/c"
    assert refused["status"] == "error" and "refusing to overwrite" in refused["error"]
    with zipfile.ZipFile(out / "a-b-c_0.1.0-offline.difypkg") as archive:
        assert "author: a-b" in archive.read("manifest.yaml").decode()


# Bundles


def test_bundle_layout_is_the_daemons_and_deterministic(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    packages = [plugin_package(tmp_path, "demo"), plugin_package(tmp_path, "openai", author="langgenius")]
    first, second = tmp_path / "a" / "plugins.difybndl", tmp_path / "b" / "plugins.difybndl"
    for output in (first, second):
        assert main(["bundle", *map(str, packages), "-o", str(output)]) == 0
    assert first.read_bytes() == second.read_bytes()
    checksums = sorted(zip_checksum(path) for path in packages)
    with zipfile.ZipFile(first) as archive:
        names = archive.namelist()
        manifest = yaml.safe_load(archive.read("manifest.yaml"))
        assert all(archive.read(f"_assets/{c}") in [p.read_bytes() for p in packages] for c in checksums)
    assert names == sorted(["README.md", "_assets/icon.svg", "manifest.yaml", *(f"_assets/{c}" for c in checksums)])
    assert manifest["type"] == "bundle" and manifest["icon"] == "icon.svg" and manifest["name"] == "plugins"
    assert sorted(d["value"]["path"] for d in manifest["dependencies"]) == checksums
    assert {d["type"] for d in manifest["dependencies"]} == {"package"}
    settings = capsys.readouterr().out
    assert "FORCE_VERIFYING_SIGNATURE=false" in settings
    assert "ENFORCE_LANGGENIUS_PLUGIN_SIGNATURES=false  # plugin daemon, bundle uploads only: langgenius/openai" in (
        " ".join(settings.split())
    ).replace(" # ", "  # ")


def test_bundle_signs_every_package_and_langgenius_ones_with_their_category(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from dify_repack.signing import generate_keypair, verify_signature

    private, public = generate_keypair(tmp_path / "keys" / "test", bits=2048)
    packages = [plugin_package(tmp_path, "demo"), plugin_package(tmp_path, "openai", author="langgenius")]
    output = tmp_path / "signed.difybndl"
    argv = ["bundle", *map(str, packages), "-o", str(output), "--sign-key", str(private), "--langgenius-category"]
    assert main([*argv, "--json"]) == 0
    document = payload(capsys)
    assert {entry["identifier"].split(":")[0]: entry["category"] for entry in document["packages"]} == {
        "langgenius/openai": "langgenius",
        "tester/demo": "community",
    }
    settings = document["settings"]
    assert not any(line.startswith("FORCE_VERIFYING_SIGNATURE") for line in settings)
    assert any(line.startswith("THIRD_PARTY_SIGNATURE_VERIFICATION_ENABLED=true") for line in settings)
    assert any("only on daemons before 0.6.10" in line for line in settings)
    bundle = read_bundle(output, tmp_path / "extracted")
    for entry in bundle.entries:
        assert verify_signature(tmp_path / "extracted" / entry.path, public).verified
    assert all(path.read_bytes() == path.read_bytes() for path in packages)  # the inputs are left as they are


def test_bundle_refuses_two_different_packages_of_one_version(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    one = plugin_package(tmp_path / "one", "demo")
    two = write_package(
        make_plugin(tmp_path / "two-src", {**REQUIREMENTS, "main.py": "print(2)\n"}), tmp_path / "two.difypkg"
    ).path
    output = tmp_path / "x.difybndl"
    assert main(["bundle", str(one), str(two), "-o", str(output)]) == 2
    assert "two different packages of tester/demo 0.1.0" in capsys.readouterr().err
    assert not output.exists()


def test_inspect_lists_each_embedded_package_and_the_bundle_settings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    packages = [plugin_package(tmp_path, "demo"), plugin_package(tmp_path, "other")]
    output = tmp_path / "plugins.difybndl"
    assert main(["bundle", *map(str, packages), "-o", str(output), "-q"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(output), "--json"]) == 0
    document = payload(capsys)
    assert [entry["identifier"] for entry in document["packages"]] == [
        f"tester/demo:0.1.0@{zip_checksum(packages[0])}",
        f"tester/other:0.1.0@{zip_checksum(packages[1])}",
    ]
    assert [inspection["sizes"]["compressed"] for inspection in document["inspections"]] == [
        path.stat().st_size for path in packages
    ]
    assert all(inspection["signature"]["signed"] is False for inspection in document["inspections"])
    assert main(["inspect", str(output)]) == 0
    text = capsys.readouterr().out
    assert "tester/demo:0.1.0@" in text and "unsigned" in text and "Dify settings for this bundle upload" in text


@pytest.fixture(scope="module")
def offline_packages(index: LocalIndex, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two offline packages from pack (no verification), and an original package that goes online."""
    from dify_repack.packing import PackOptions, pack
    from dify_repack.resolve import Indexes

    base = tmp_path_factory.mktemp("offline")
    options = PackOptions(output_dir=base / "out", indexes=Indexes(index.url), cache_dir=base / "cache")
    good = pack(make_plugin(base / "demo", REQUIREMENTS), options).output
    original = plugin_package(base, "broken")
    return good, original


def test_verify_replays_each_embedded_package_and_names_the_bad_one(
    tmp_path: Path, offline_packages: tuple[Path, Path], python312: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good, original = offline_packages
    own_uv = run([uv_bin(), "--version"]).stdout.split()[1]
    fast = ["--profile", "uv-pip", "--uv", own_uv, "--no-start", "--arch", "amd64"]
    passing = tmp_path / "good.difybndl"
    assert main(["bundle", str(good), "-o", str(passing), "-q"]) == 0
    assert main(["verify", str(passing), *fast]) == 0
    assert "every embedded package passed" in capsys.readouterr().out

    failing = tmp_path / "mixed.difybndl"
    assert main(["bundle", str(good), str(original), "-o", str(failing), "-q"]) == 0
    capsys.readouterr()
    assert main(["verify", str(failing), *fast, "--json"]) == 7
    document = payload(capsys)
    bad_identifier = f"tester/broken:0.1.0@{zip_checksum(original)}"
    assert document["command"] == "verify" and document["status"] == "error"
    assert document["failed"] == [bad_identifier]
    assert [report["identifier"] for report in document["packages"]] == [
        bad_identifier,
        f"tester/demo:0.1.0@{zip_checksum(good)}",
    ]
    assert main(["verify", str(failing), *fast]) == 7
    assert f"FAILED: {bad_identifier} would not install offline" in " ".join(capsys.readouterr().out.split())


def test_an_interrupt_stops_the_batch_instead_of_failing_one_plugin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dify_repack import batch
    from dify_repack.errors import Interrupted
    from dify_repack.sources import parse_source

    def interrupted(*_args: object) -> None:
        raise Interrupted()

    monkeypatch.setattr(batch, "pack", interrupted)
    sources = [
        parse_source(str(make_plugin(tmp_path / name, {"manifest.yaml": manifest_yaml(name=name)})))
        for name in ("a", "b")
    ]
    with pytest.raises(Interrupted):
        batch.pack_many(sources, batch.BatchOptions(jobs=2))


def test_bundle_help_has_the_output_options_and_examples(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bundle", "--json", "--help"]) == 0
    out = capsys.readouterr().out
    assert "-q, --quiet" in out and "--json" in out and "Examples:" in out and "--langgenius-category" in out


def test_langgenius_category_needs_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = plugin_package(tmp_path, "demo")
    assert main(["bundle", str(package), "-o", str(tmp_path / "x.difybndl"), "--langgenius-category", "--json"]) == 2
    document = payload(capsys)
    assert document["command"] == "bundle" and document["error"]["exit_code"] == 2
    assert "needs --sign-key" in document["error"]["message"]

"""pack against a local index of tiny real wheels and sdists: what goes in the package, and bad input."""

from __future__ import annotations

import hashlib
import json
import stat
import zipfile
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin, manifest_yaml
from dify_repack.cli import main
from dify_repack.errors import BuildError, DependencyError, NetworkError, PackageError
from dify_repack.package import write_package
from dify_repack.packing import PackOptions, pack
from dify_repack.requirements import tomllib
from dify_repack.resolve import Indexes


def _options(index: LocalIndex, out: Path, cache: Path, **kwargs: object) -> PackOptions:
    return PackOptions(output_dir=out, indexes=Indexes(index.url), cache_dir=cache, **kwargs)  # type: ignore[arg-type]


def _names(package: Path) -> list[str]:
    with zipfile.ZipFile(package) as archive:
        return archive.namelist()


def _read(package: Path, name: str) -> str:
    with zipfile.ZipFile(package) as archive:
        return archive.read(name).decode()


def _wheels(package: Path) -> set[str]:
    return {name.removeprefix("wheels/") for name in _names(package) if name.startswith("wheels/")}


def test_markers_are_evaluated_for_each_target_not_the_host(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {
            "manifest.yaml": manifest_yaml(arch=("amd64", "arm64")),
            "requirements.txt": "dify_plugin==0.7.4\nmultiplatform\n",
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    wheels = _wheels(result.output)
    assert "armonly-1.0.0-py3-none-any.whl" in wheels
    assert not any(name.startswith(("winonly", "oldpy")) for name in wheels)
    requirements = _read(result.output, "requirements.txt").splitlines()
    assert requirements[1:3] == ["--no-index", "--find-links=./wheels/"]
    assert "armonly==1.0.0 ; platform_machine == 'aarch64'" in requirements
    assert "dify_plugin==0.7.4" in requirements
    assert "multiplatform==1.0.0" in requirements


def test_each_architecture_gets_its_newest_compatible_native_wheel(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {
            "manifest.yaml": manifest_yaml(arch=("amd64",)),
            "requirements.txt": "dify_plugin==0.7.4\nfastmath\n",
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir, arch="all"))
    wheels = _wheels(result.output)
    # 3.0.0 has cp313 wheels only; 2.0.0 is published only as manylinux_2_28 and must still be found.
    assert {name for name in wheels if name.startswith("fastmath")} == {
        "fastmath-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl",
        "fastmath-2.0.0-cp312-cp312-manylinux_2_28_aarch64.whl",
    }
    assert [str(target) for target in result.targets] == ["cp312-linux-amd64", "cp312-linux-arm64"]


def test_pure_sdist_is_built_once_into_a_wheel_for_all_targets(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {
            "manifest.yaml": manifest_yaml(arch=("amd64", "arm64")),
            "requirements.txt": "dify_plugin==0.7.4\npuresdist\n",
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    assert "puresdist-1.0.0-py3-none-any.whl" in _wheels(result.output)
    assert not any(name.endswith((".tar.gz", ".zip")) for name in _names(result.output))
    assert result.built == ("puresdist 1.0.0",)


def test_native_sdist_builds_for_the_host_arch_with_target_python(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, python312: Path
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nnativesdist\n"})
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir, arch="amd64"))
    assert "nativesdist-1.0.0-cp312-cp312-linux_x86_64.whl" in _wheels(result.output)


def test_native_sdist_for_another_arch_fails_naming_package_and_target(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nnativesdist\n"})
    with pytest.raises(BuildError, match=r"nativesdist 1\.0\.0 .*cp312-linux-arm64"):
        pack(plugin, _options(index, tmp_path / "out", cache_dir, arch="all"))
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_sdist_needing_a_compiler_fails_with_the_build_output(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nneedscompiler\n"})
    with pytest.raises(BuildError, match=r"needscompiler 1\.0\.0: building a wheel from its sdist failed.*gcc"):
        pack(plugin, _options(index, tmp_path / "out", cache_dir))


def test_no_wheel_for_a_target_names_package_version_and_target(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nx86only\n"})
    with pytest.raises(DependencyError, match=r"cp312-linux-arm64.*x86only"):
        pack(plugin, _options(index, tmp_path / "out", cache_dir, arch="arm64"))


PYPROJECT = """\
# The project's own comment stays.
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.11"  # open on purpose
dependencies = [
    "dify_plugin==0.7.4",  # the SDK
    "fastmath>=1",
]

[dependency-groups]
dev = ["devtool"]

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[tool.uv]
dev-dependencies = ["devtool"]
required-environments = ["sys_platform == 'linux'"]

[tool.ruff]
line-length = 99

[tool.uv.build-backend]
module-name = "demo"

[project.urls]
Homepage = "https://example.invalid/demo"
"""


def test_pyproject_is_made_offline_keeping_the_users_formatting(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {
            "manifest.yaml": manifest_yaml(arch=("amd64", "arm64")),
            "pyproject.toml": PYPROJECT,
            ".python-version": "3.11\n",
            ".gitignore": "wheels/\n*.whl\n.venv\nuv.lock\n",
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    text = _read(result.output, "pyproject.toml")
    assert "# The project's own comment stays." in text and "# the SDK" in text and "# open on purpose" in text
    data = tomllib.loads(text)
    assert "dependency-groups" not in data
    assert set(data["tool"]["uv"]) == {"no-index", "find-links", "environments", "package"}
    assert data["tool"]["uv"]["package"] is False
    assert data["tool"]["ruff"] == {"line-length": 99}
    assert data["project"]["urls"] == {"Homepage": "https://example.invalid/demo"}
    assert data["project"]["dependencies"] == ["dify_plugin==0.7.4", "fastmath>=1"]
    environments = data["tool"]["uv"]["environments"]
    assert len(environments) == 2 and all("python_full_version < '3.13'" in env for env in environments)
    lock = tomllib.loads(_read(result.output, "uv.lock"))
    sources = {package["source"].get("registry") for package in lock["package"] if "registry" in package["source"]}
    assert sources == {"wheels"}
    assert _read(result.output, ".python-version") == "3.12\n"
    assert _read(result.output, ".gitignore") == ".venv\n"
    assert not any(name.startswith("wheels/devtool") for name in _names(result.output))
    # Both files pin the same set, from the same wheels.
    pins = {line for line in _read(result.output, "requirements.txt").splitlines() if "==" in line}
    locked = {f"{p['name']}=={p['version']}" for p in lock["package"] if "registry" in p["source"]}
    assert {pin.replace("dify_plugin", "dify-plugin") for pin in pins} == locked


def test_disagreeing_files_resolve_one_set_from_pyproject(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["dify_plugin==0.7.4", "fastmath>=2"]\n',
            "requirements.txt": "dify_plugin==0.7.4\nfastmath==1.0.0\n",
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    assert any(
        "requirements.txt pins fastmath==1.0.0 but pyproject.toml asks fastmath>=2" in note for note in result.notes
    )
    assert "fastmath==2.0.0" in _read(result.output, "requirements.txt").splitlines()


def test_uv_lock_pins_are_preferred(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    lock = (
        'version = 1\nrevision = 3\nrequires-python = ">=3.12"\n\n'
        '[[package]]\nname = "helper"\nversion = "1.0.0"\nsource = { registry = "https://index.invalid/simple" }\n'
    )
    plugin = make_plugin(
        tmp_path / "src",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["dify_plugin==0.7.4"]\n',
            "uv.lock": lock,
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    assert "helper==1.0.0" in _read(result.output, "requirements.txt").splitlines()


def test_output_is_deterministic_idempotent_and_leaves_the_input_alone(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nfastmath\n"})
    source = tmp_path / "tester-demo_0.1.0.difypkg"
    (plugin / "wheels").mkdir()
    (plugin / "wheels" / "stale-0.1-py3-none-any.whl").write_bytes(b"stale")
    write_package(plugin, source)
    before = hashlib.sha256(source.read_bytes()).hexdigest()
    first = pack(source, _options(index, tmp_path / "a", cache_dir))
    second = pack(source, _options(index, tmp_path / "b", cache_dir))
    assert hashlib.sha256(source.read_bytes()).hexdigest() == before
    assert first.output.read_bytes() == second.output.read_bytes()
    assert first.output.name == "tester-demo_0.1.0-offline.difypkg"
    assert "stale-0.1-py3-none-any.whl" not in _wheels(first.output)
    again = pack(first.output, _options(index, tmp_path / "c", cache_dir))
    assert again.output.name == first.output.name
    assert again.output.read_bytes() == first.output.read_bytes()
    with zipfile.ZipFile(first.output) as archive:
        infos = archive.infolist()
    assert [info.filename for info in infos] == sorted(info.filename for info in infos)
    assert not any(info.is_dir() for info in infos)
    assert all(stat.S_IMODE(info.external_attr >> 16) == 0o644 for info in infos)
    assert archive.comment == b""


def test_second_run_makes_no_network_request(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nfastmath\npuresdist\n"})
    pack(plugin, _options(index, tmp_path / "a", cache_dir))
    index.requests.clear()
    pack(plugin, _options(index, tmp_path / "b", cache_dir))
    assert index.requests == []  # no resolution, no download, no build: everything came from the cache
    pack(plugin, _options(index, tmp_path / "c", cache_dir, refresh=True))
    assert any(path.startswith("/simple/") for path in index.requests)  # --refresh asks the index again


def _zip(path: Path, entries: dict[str, bytes], *, symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo(symlink)
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            archive.writestr(info, "/etc/passwd")
    return path


def _bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    good = {
        "manifest.yaml": manifest_yaml().encode(),
        "requirements.txt": b"dify_plugin==0.7.4\n",
        "main.py": b"",
    }
    not_zip = tmp_path / "not-a-zip.difypkg"
    not_zip.write_text("<html>Not Found</html>")
    truncated = _zip(tmp_path / "truncated.difypkg", good)
    truncated.write_bytes(truncated.read_bytes()[:-60])
    return {
        "not a zip": (not_zip, "not a readable .difypkg"),
        "truncated": (truncated, "not a readable .difypkg"),
        "dotdot": (_zip(tmp_path / "dotdot.difypkg", {**good, "../evil.py": b""}), "outside the package"),
        "absolute": (_zip(tmp_path / "abs.difypkg", {**good, "/etc/evil": b""}), "absolute"),
        "symlink": (_zip(tmp_path / "link.difypkg", good, symlink="link"), "symbolic link"),
        "no manifest": (_zip(tmp_path / "nomanifest.difypkg", {"main.py": b""}), "no manifest.yaml"),
        "not python": (
            _zip(tmp_path / "go.difypkg", {**good, "manifest.yaml": manifest_yaml(language="go").encode()}),
            "only Python plugins",
        ),
        "no dependency files": (
            _zip(tmp_path / "nodeps.difypkg", {"manifest.yaml": good["manifest.yaml"], "main.py": b""}),
            "neither requirements.txt nor pyproject.toml",
        ),
        "invalid requirement": (
            _zip(tmp_path / "b65.difypkg", {**good, "requirements.txt": b"# SDK\ndify_plugin==b65\n"}),
            "requirements.txt:2: invalid requirement 'dify_plugin==b65'",
        ),
        "missing file": (tmp_path / "does-not-exist.difypkg", "does-not-exist.difypkg"),
    }


# The exit code each bad input must give: 2 usage, 3 bad package, 4 dependency declaration (README).
BAD_INPUT_CODES = {
    "not a zip": 3,
    "truncated": 3,
    "dotdot": 3,
    "absolute": 3,
    "symlink": 3,
    "no manifest": 3,
    "not python": 3,
    "no dependency files": 4,
    "invalid requirement": 4,
    "missing file": 2,
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT_CODES))
def test_bad_input_is_one_line_error_and_no_output(
    case: str, tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code = main(
        [
            "pack",
            str(path),
            "-o",
            str(out),
            "--index-url",
            index.url,
            "--cache-dir",
            str(cache_dir),
            "--no-verify",
        ]
    )
    captured = capsys.readouterr()
    assert code == BAD_INPUT_CODES[case]
    lines = captured.err.splitlines()
    assert lines[0].startswith("error: ") and message in lines[0]
    assert all(line.startswith("tip: ") for line in lines[1:])  # at most a tip follows the one-line error
    assert "Traceback" not in captured.err + captured.out
    assert not out.exists() or not list(out.iterdir())


def test_zip_bomb_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import dify_repack.package as package_module

    monkeypatch.setattr(package_module, "MAX_UNCOMPRESSED_BYTES", 1024 * 1024)
    bomb = _zip(
        tmp_path / "bomb.difypkg",
        {"manifest.yaml": manifest_yaml().encode(), "zeros": bytes(8 * 1024 * 1024)},
    )
    assert bomb.stat().st_size < 100_000
    with pytest.raises(PackageError, match="zip bomb"):
        pack(bomb, PackOptions(output_dir=tmp_path / "out"))


def test_unreachable_index_is_a_network_error(tmp_path: Path, cache_dir: Path) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    with pytest.raises(NetworkError, match="cannot reach the package index"):
        pack(
            plugin,
            PackOptions(output_dir=tmp_path / "out", indexes=Indexes("http://127.0.0.1:9/simple"), cache_dir=cache_dir),
        )


def test_unresolvable_requirement_names_the_package(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nhelper==9.9\n"})
    with pytest.raises(DependencyError, match=r"helper==9\.9"):
        pack(plugin, _options(index, tmp_path / "out", cache_dir))


def test_sign_key_signs_the_package_and_drops_the_signature_setting(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    from dify_repack.signing import generate_keypair, verify_signature

    private, public = generate_keypair(tmp_path / "keys" / "test", bits=2048)
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir, sign_key=private))
    assert result.signed and verify_signature(result.output, public).verified
    assert not any(setting.startswith("FORCE_VERIFYING_SIGNATURE") for setting in result.dify_settings)
    assert _names(result.output).count(".verification.dify.json") == 1
    assert private.read_bytes() not in [zipfile.ZipFile(result.output).read(n) for n in _names(result.output)]


def test_batch_goes_on_after_a_bad_plugin_and_reports_each(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = make_plugin(tmp_path / "good", {"requirements.txt": "dify_plugin==0.7.4\n"})
    bad = make_plugin(
        tmp_path / "bad", {"requirements.txt": "dify_plugin==b65\n", "manifest.yaml": manifest_yaml(name="bad")}
    )
    listing = tmp_path / "plugins.txt"
    listing.write_text(f"# two plugins\n{bad}\n\n{good}  # the good one\n")
    out = tmp_path / "out"
    argv = ["pack", "-r", str(listing), "-o", str(out), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    code = main([*argv, "--no-verify", "--json"])
    payload = json.loads(capsys.readouterr().out)
    assert code == 10
    assert payload["schema"] == 1 and payload["command"] == "pack" and payload["status"] == "partial"
    assert payload["error"]["exit_code"] == 10 and "1 of 2 plugins failed" in payload["error"]["message"]
    assert [result["status"] for result in payload["results"]] == ["error", "success"]
    failed = payload["results"][0]
    assert "dify_plugin==b65" in failed["error"] and failed["exit_code"] == 4
    assert "a version looks like 1.2.3" in failed["tip"]  # what the one-plugin error line's tip says
    assert [path.name for path in out.iterdir()] == ["tester-demo_0.1.0-offline.difypkg"]


def test_no_verify_is_said_in_the_summary(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    argv = ["pack", str(plugin), "-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    assert main([*argv, "--no-verify"]) == 0
    out = capsys.readouterr().out
    assert "skipped (--no-verify)" in out and "FORCE_VERIFYING_SIGNATURE=false" in out


def _own_uv_version() -> str:
    import subprocess

    from dify_repack.uvbin import uv_bin

    return subprocess.run([uv_bin(), "--version"], capture_output=True, text=True, check=True).stdout.split()[1]


def test_pack_verifies_and_leaves_nothing_when_the_plugin_cannot_start(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, python312: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    argv += ["--uv", _own_uv_version()]
    good = make_plugin(tmp_path / "good", {"requirements.txt": "dify_plugin==0.7.4\n"})
    assert main(["pack", str(good), *argv, "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["verification"] == {
        "isolation": "unshare -n",
        "checks": 5,
        "ok": True,
        "remembered": None,
        "warnings": [],
    }
    broken = make_plugin(
        tmp_path / "broken",
        {
            "requirements.txt": "dify_plugin==0.7.4\n",
            "main.py": "import missing_module\n",
            "manifest.yaml": manifest_yaml(name="broken"),
        },
    )
    assert main(["pack", str(broken), *argv]) == 7
    err = capsys.readouterr().err
    assert "failed at start" in err and "missing_module" in err
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["tester-demo_0.1.0-offline.difypkg"]


def test_a_download_that_does_not_match_its_hash_never_enters_the_cache(tmp_path: Path, index: LocalIndex) -> None:
    from dify_repack.http import make_client
    from dify_repack.resolve import Artifact
    from dify_repack.wheels import WheelCache

    cache = WheelCache(tmp_path / "cache")
    url = index.url.replace("/simple", "/files/helper-1.0.0-py3-none-any.whl")
    wrong = Artifact(url, "helper-1.0.0-py3-none-any.whl", "0" * 64, None)
    with make_client() as client, pytest.raises(NetworkError, match="does not match"):
        cache.fetch(client, wrong)
    assert not [path for path in (tmp_path / "cache").rglob("*") if path.is_file()]
    real = hashlib.sha256((index.files / "helper-1.0.0-py3-none-any.whl").read_bytes()).hexdigest()
    with make_client() as client:
        stored = cache.fetch(client, Artifact(url, wrong.filename, real, None))
    assert stored == cache.path_for(real, wrong.filename) and cache.lookup(Artifact(url, wrong.filename, real, None))


def test_every_unbuildable_sdist_is_named_in_one_run(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nneedscompiler\nnativesdist\n"})
    with pytest.raises(BuildError) as failure:
        pack(plugin, _options(index, tmp_path / "out", cache_dir, arch="arm64"))
    assert "needscompiler 1.0.0" in failure.value.message and "nativesdist 1.0.0" in failure.value.message


def test_pyproject_without_project_table_gets_one(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {"pyproject.toml": "[tool.ruff]\nline-length = 100\n", "requirements.txt": "dify_plugin==0.7.4\n"},
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    data = tomllib.loads(_read(result.output, "pyproject.toml"))
    assert data["project"]["name"] == "demo" and data["project"]["dependencies"] == ["dify_plugin==0.7.4"]
    assert data["project"]["requires-python"] == ">=3.12"
    assert any("no [project] table" in note for note in result.notes)


def test_cache_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cache = tmp_path / "cache"
    from dify_repack.wheels import WheelCache

    WheelCache(cache).mark()  # as pack does when it first uses a cache
    (cache / "files" / "ab").mkdir(parents=True)
    (cache / "files" / "ab" / "x.whl").write_bytes(b"x" * 1024)
    assert main(["cache", "info", "--cache-dir", str(cache)]) == 0
    assert "1 files" in capsys.readouterr().out
    assert main(["cache", "clean", "--cache-dir", str(cache)]) == 0
    assert not cache.exists()


def test_direct_url_requirement_fails_clearly(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    plugin = make_plugin(
        tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\ntool @ git+https://example.invalid/tool.git\n"}
    )
    with pytest.raises(DependencyError, match=r"requirements.txt:2: tool is a direct URL requirement"):
        pack(plugin, _options(index, tmp_path / "out", cache_dir))


def test_versions_that_differ_by_architecture_install_on_each(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, python312: Path
) -> None:
    from dify_repack.verify import VerifyOptions, verify_package

    plugin = make_plugin(
        tmp_path / "src",
        {
            "manifest.yaml": manifest_yaml(arch=("amd64", "arm64")),
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\n'
            'dependencies = ["dify_plugin==0.7.4", "divergent"]\n',
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    requirements = _read(result.output, "requirements.txt").splitlines()
    assert "divergent==2.0.0 ; platform_machine == 'x86_64'" in requirements
    assert "divergent==1.0.0 ; platform_machine == 'aarch64'" in requirements
    report = verify_package(
        result.output,
        VerifyOptions(
            profiles=["uv-sync", "uv-sync-frozen"], uv_versions=[_own_uv_version()], cache_dir=cache_dir, start=False
        ),
    )
    assert report.ok, report.to_json()


def test_sdk_only_in_a_dependency_group_is_made_a_runtime_dependency(
    tmp_path: Path, index: LocalIndex, cache_dir: Path
) -> None:
    plugin = make_plugin(
        tmp_path / "src",
        {
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["fastmath~=2.0"]\n\n'
            '[dependency-groups]\ndev = ["devtool"]\ndify = ["dify_plugin~=0.7.1"]\n',
            "requirements.txt": "dify_plugin~=0.7.1\nfastmath~=1.0\n",
        },
    )
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    assert any(name.startswith("wheels/dify_plugin-0.7.4") for name in _names(result.output))
    data = tomllib.loads(_read(result.output, "pyproject.toml"))
    # Added where uv sync reads it, and pinned to what ships: the daemon's SDK patch reads that line.
    assert data["project"]["dependencies"] == ["fastmath~=2.0", "dify_plugin==0.7.4"]
    assert any("only in dependency group 'dify'" in note for note in result.notes)
    assert any("requirements.txt asks fastmath~=1.0 but pyproject.toml asks fastmath~=2.0" in n for n in result.notes)


def test_extras_a_plugin_asks_of_itself_become_runtime_dependencies(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, python312: Path
) -> None:
    # uv sync installs `demo[llm]` among demo's own dependencies; pack removes the extras (uv lock would resolve them
    # all), so what they bring takes that line's place, under its marker, nested extras included.
    from dify_repack.verify import VerifyOptions, verify_package

    pyproject = (
        '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["Demo[LLM]; sys_platform == \'linux\'"]\n\n'
        '[project.optional-dependencies]\nllm = ["fastmath~=2.0", "demo[base]"]\nbase = ["dify_plugin==0.7.4"]\n'
        'unused = ["oldpy"]\n'
    )
    plugin = make_plugin(tmp_path / "src", {"pyproject.toml": pyproject})
    result = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    data = tomllib.loads(_read(result.output, "pyproject.toml"))
    assert data["project"]["dependencies"] == [
        'fastmath~=2.0; sys_platform == "linux"',
        'dify_plugin==0.7.4; sys_platform == "linux"',
    ]
    assert "optional-dependencies" not in data["project"]
    names = _names(result.output)
    assert any(name.startswith("wheels/fastmath-2.0.0") for name in names)
    assert not any(name.startswith("wheels/oldpy") for name in names)
    assert any("(the plugin's own extras) is now" in note for note in result.notes)
    options = VerifyOptions(["uv-sync-frozen"], [_own_uv_version()], cache_dir=cache_dir, start=False)
    assert verify_package(result.output, options).ok


def test_sdk_only_in_an_extra_is_made_a_runtime_dependency(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    pyproject = (
        '[project]\nname = "demo"\nversion = "0.1.0"\ndependencies = ["fastmath~=2.0"]\n\n'
        '[project.optional-dependencies]\ndify = ["dify_plugin~=0.7.1"]\n'
    )
    result = pack(
        make_plugin(tmp_path / "src", {"pyproject.toml": pyproject}), _options(index, tmp_path / "out", cache_dir)
    )
    data = tomllib.loads(_read(result.output, "pyproject.toml"))
    assert data["project"]["dependencies"] == ["fastmath~=2.0", "dify_plugin==0.7.4"]
    assert any("only in extra 'dify'" in note for note in result.notes)


def test_glibc_option_admits_wheels_for_a_newer_glibc(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\nnewglibc\n"})
    argv = ["pack", str(plugin), "-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    assert main([*argv, "--no-verify"]) == 4
    assert "newglibc" in capsys.readouterr().err
    assert main([*argv, "--no-verify", "--glibc", "2.34"]) == 0
    assert main([*argv, "--no-verify", "--glibc", "3.1"]) == 2
    package = tmp_path / "out" / "tester-demo_0.1.0-offline.difypkg"
    assert "wheels/newglibc-1.0.0-cp312-cp312-manylinux_2_34_x86_64.whl" in _names(package)


def test_incompressible_files_are_stored_and_text_is_deflated(tmp_path: Path) -> None:
    import os

    root = tmp_path / "src"
    root.mkdir()
    (root / "model.bin").write_bytes(os.urandom(300_000))
    (root / "main.py").write_text("print('hello')\n" * 1000)
    write_package(root, tmp_path / "out.difypkg")
    with zipfile.ZipFile(tmp_path / "out.difypkg") as archive:
        methods = {info.filename: info.compress_type for info in archive.infolist()}
    assert methods == {"main.py": zipfile.ZIP_DEFLATED, "model.bin": zipfile.ZIP_STORED}


def test_repacking_in_place_is_refused_and_the_input_kept(tmp_path: Path, index: LocalIndex, cache_dir: Path) -> None:
    from dify_repack.errors import UsageError

    plugin = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    first = pack(plugin, _options(index, tmp_path / "out", cache_dir))
    before = first.output.read_bytes()
    with pytest.raises(UsageError, match="would replace its own input"):
        pack(first.output, _options(index, tmp_path / "out", cache_dir))
    assert first.output.read_bytes() == before


def test_requirements_file_forms(tmp_path: Path) -> None:
    from dify_repack.requirements import declared_dependencies

    make_plugin(
        tmp_path,
        {
            "requirements.txt": "# comment\n--index-url https://mirror.invalid/simple\n-r base.txt\n"
            f"fastmath==2.0.0 \\\n    --hash=sha256:{'ab' * 32}  # pinned\nhelper>=1 ; python_version >= '3.8'\n"
            "dify_plugin~=0.0.1b76\n",
            "base.txt": "multiplatform[extra]\n",
        },
    )
    declared = declared_dependencies(tmp_path)
    assert [str(req) for req in declared.requirements] == [
        "multiplatform[extra]",
        "fastmath==2.0.0",
        'helper>=1; python_version >= "3.8"',
        "dify_plugin~=0.0.1b76",
    ]
    assert declared.notes == (
        "requirements.txt:2: --index-url https://mirror.invalid/simple is not used to resolve; "
        "give it to dify-repack as --index-url",
    )
    assert [(pin.name, pin.hashes) for pin in declared.hashes] == [("fastmath", frozenset({f"sha256:{'ab' * 32}"}))]


def test_batch_packs_plugins_side_by_side(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = make_plugin(tmp_path / "a", {"requirements.txt": "dify_plugin==0.7.4\nfastmath\n"})
    second = make_plugin(
        tmp_path / "b",
        {"requirements.txt": "dify_plugin==0.7.4\npuresdist\n", "manifest.yaml": manifest_yaml(name="other")},
    )
    out = tmp_path / "out"
    argv = ["pack", str(first), str(second), "-j", "2", "-o", str(out), "--index-url", index.url]
    assert main([*argv, "--cache-dir", str(cache_dir), "--no-verify"]) == 0
    captured = capsys.readouterr()
    assert sorted(path.name for path in out.iterdir()) == [
        "tester-demo_0.1.0-offline.difypkg",
        "tester-other_0.1.0-offline.difypkg",
    ]
    assert f"{second}: building puresdist 1.0.0" in captured.err
    assert "dify-repack pack" in captured.out  # the batch table

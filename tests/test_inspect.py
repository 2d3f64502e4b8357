"""inspect: a static reading of a .difypkg must agree with the daemon's rules (DAEMON-FACTS §1-5).

Packages are built from dicts of files in tmp_path; a wheel here only needs the right file name, so its
contents are a tiny zip. The checksum is recomputed from DAEMON-FACTS §1 with hashlib alone (builders.py).
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import pytest

from builders import daemon_checksum, make_plugin, manifest_yaml
from dify_repack.cli import main
from dify_repack.errors import ExitCode, PackageError
from dify_repack.inspect import SCHEMA, Inspection, inspect_package, upload_settings
from dify_repack.package import write_package
from dify_repack.packing import MIB
from dify_repack.targets import Target
from dify_repack.verdicts import OLD_UV, Verdict

ARCHES = ("amd64", "arm64")
PURE = "wheels/dify_plugin-0.5.1-py3-none-any.whl"
NUMPY_X86 = "wheels/numpy-2.4.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl"
NUMPY_ARM = "wheels/numpy-2.4.1-cp312-cp312-manylinux_2_27_aarch64.manylinux_2_28_aarch64.whl"
REQUIREMENTS = "--no-index\n--find-links=./wheels/\ndify_plugin==0.5.1\nnumpy==2.4.1\n"
ENVIRONMENTS = ",\n".join(f'  "{Target("3.12", arch).uv_environment}"' for arch in ARCHES)
PYPROJECT = f"""\
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.12"
dependencies = ["dify_plugin==0.5.1", "numpy==2.4.1"]

[tool.uv]
no-index = true
find-links = ["./wheels/"]
package = false
environments = [
{ENVIRONMENTS},
]
"""
LOCK = """\
version = 1
revision = 3
requires-python = ">=3.12"

[[package]]
name = "demo"
version = "0.1.0"
source = { virtual = "." }

[[package]]
name = "numpy"
version = "2.4.1"
source = { registry = "wheels" }
wheels = [
    { path = "numpy-2.4.1-cp312-cp312-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl" },
]
"""
REMOTE_LOCK = LOCK.replace(
    '{ registry = "wheels" }', '{ registry = "https://ci:secret@index.invalid/simple" }'
).replace('{ path = "numpy', '{ url = "https://files.invalid/packages/numpy')


def fake_wheel() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("placeholder.txt", "only the file name matters here")
    return buffer.getvalue()


def offline_files(**changes: str | None) -> dict[str, str | bytes | None]:
    """A package as pack writes it: both install paths point at ./wheels only; ``changes`` override files."""
    files: dict[str, str | bytes | None] = {
        "manifest.yaml": manifest_yaml(arch=ARCHES),
        "requirements.txt": REQUIREMENTS,
        "pyproject.toml": PYPROJECT,
        "uv.lock": LOCK,
        ".python-version": "3.12\n",
        PURE: fake_wheel(),
        NUMPY_X86: fake_wheel(),
        NUMPY_ARM: fake_wheel(),
    }
    files.update(changes)
    return files


def build(tmp_path: Path, files: Mapping[str, str | bytes | None], name: str = "demo.difypkg") -> Path:
    root = tmp_path / f"src-{name}"
    make_plugin(root, {path: text for path, text in files.items() if not isinstance(text, bytes)})
    for path, data in files.items():
        if isinstance(data, bytes):
            (root / path).parent.mkdir(parents=True, exist_ok=True)
            (root / path).write_bytes(data)
    return write_package(root, tmp_path / name).path


def verdict(inspection: Inspection, profile: str) -> Verdict:
    return next(v for v in inspection.verdicts if v.profile == profile)


def test_correct_offline_package_is_ok_everywhere(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files()))
    assert [(v.profile, v.reason) for v in result.verdicts] == [
        ("pip", "ok"),
        ("uv-pip", "ok"),
        ("uv-sync", "ok"),
        ("uv-sync-frozen", "ok"),
        ("mirror", "ok"),
    ]
    assert verdict(result, "uv-sync-frozen").command == "uv sync --no-dev --frozen"
    assert result.problems == ()
    assert result.wheel_dirs == ("wheels",)
    assert [(t.target, t.missing) for t in result.targets] == [("cp312-linux-amd64", ()), ("cp312-linux-arm64", ())]
    assert NUMPY_ARM not in result.targets[0].wheels and NUMPY_ARM in result.targets[1].wheels
    assert result.dependency_files == ("requirements.txt", "pyproject.toml", "uv.lock", ".python-version")
    assert result.manifest.plugin_id == "tester/demo" and result.manifest.arches == ARCHES


def test_identifier_uses_the_daemons_checksum(tmp_path: Path) -> None:
    package = build(tmp_path, offline_files())
    result = inspect_package(package)
    assert result.checksum == daemon_checksum(package)
    assert result.identifier == f"tester/demo:0.1.0@{daemon_checksum(package)}"


def test_directory_entry_is_reported_not_fatal(tmp_path: Path) -> None:
    package = build(tmp_path, offline_files())
    with zipfile.ZipFile(package, "a") as archive:
        archive.writestr(zipfile.ZipInfo("wheels/"), b"")
    result = inspect_package(package)
    assert result.directory_entries == ("wheels/",)
    assert any("read wheels: is a directory" in problem for problem in result.problems)
    assert result.checksum == daemon_checksum(package)
    with zipfile.ZipFile(package, "a") as archive:
        for number in range(500):
            archive.writestr(zipfile.ZipInfo(f"folder{number}/"), b"")
    # One line for them all, naming the first few: the same words verify reports.
    (line,) = [problem for problem in inspect_package(package).problems if "is a directory" in problem]
    assert line.startswith("directory entries wheels/, folder0/") and "(491 more)" in line and len(line) < 400


def test_remote_lock_fails_only_the_frozen_profile(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files(**{"uv.lock": REMOTE_LOCK})))
    frozen = verdict(result, "uv-sync-frozen")
    assert not frozen.ok
    assert "remote index" in frozen.reason and "index.invalid" in frozen.reason
    assert "secret" not in frozen.reason  # a login in the package's lock is not shown
    assert verdict(result, "uv-sync").ok and verdict(result, "uv-pip").ok


def test_without_lock_frozen_profile_is_plain_sync(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files(**{"uv.lock": None})))
    assert verdict(result, "uv-sync-frozen") == Verdict("uv-sync-frozen", "uv sync --no-dev", ())


@pytest.mark.parametrize(
    ("environments", "expected"),
    [
        (None, "no environments"),
        ("[\"sys_platform == 'linux'\"]", "uv forks the resolution for Python 3.13+"),
        ("[\"python_full_version >= '3.12' and python_full_version < '3.13'\"]", "Windows-only wheels"),
        (
            "[\"sys_platform == 'linux' and platform_machine == 'x86_64' and python_version == '3.12'\"]",
            "environments exclude cp312-linux-arm64",
        ),
    ],
)
def test_environments_must_bound_platform_and_python(tmp_path: Path, environments: str | None, expected: str) -> None:
    start = PYPROJECT.index("environments = [")
    pyproject = PYPROJECT[:start] + (f"environments = {environments}\n" if environments else "")
    result = inspect_package(build(tmp_path, offline_files(**{"pyproject.toml": pyproject})))
    assert not verdict(result, "uv-sync").ok
    assert any(expected in reason for reason in verdict(result, "uv-sync").reasons)
    assert verdict(result, "pip").ok


def test_dev_group_fails_sync(tmp_path: Path) -> None:
    pyproject = PYPROJECT + '\n[dependency-groups]\ndev = ["pytest>=8"]\n'
    result = inspect_package(build(tmp_path, offline_files(**{"pyproject.toml": pyproject})))
    assert verdict(result, "uv-sync").reason == (
        "dev group dev must resolve offline (uv sync --no-dev still resolves groups)"
    )


def test_unknown_tool_uv_key_is_flagged(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace("package = false", "package = false\nrequired-environments = []")
    result = inspect_package(build(tmp_path, offline_files(**{"pyproject.toml": pyproject})))
    assert verdict(result, "uv-sync").reason.startswith(OLD_UV)
    assert "required-environments" in verdict(result, "uv-sync").reason
    assert any("required-environments" in problem for problem in result.problems)
    assert verdict(result, "uv-pip").ok


def test_build_system_needs_its_backend_or_package_false(tmp_path: Path) -> None:
    pyproject = PYPROJECT.replace("package = false\n", "") + '\n[build-system]\nrequires = ["hatchling"]\n'
    result = inspect_package(build(tmp_path, offline_files(**{"pyproject.toml": pyproject})))
    assert "backend hatchling must be in ./wheels" in verdict(result, "uv-sync").reason


def test_python_version_file_must_name_312(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files(**{".python-version": "3.11\n"})))
    assert "'3.11'" in verdict(result, "uv-sync").reason
    assert verdict(result, "uv-pip").ok


def test_cp313_wheels_are_missing_for_cp312(tmp_path: Path) -> None:
    files = offline_files(**{NUMPY_X86: None, NUMPY_ARM: None})  # None: the file is left out
    files["wheels/numpy-2.4.1-cp313-cp313-manylinux_2_28_x86_64.whl"] = fake_wheel()
    result = inspect_package(build(tmp_path, files))
    assert [t.missing for t in result.targets] == [("numpy==2.4.1",), ("numpy==2.4.1",)]
    assert verdict(result, "uv-pip").reasons == ("numpy==2.4.1 has no wheel for cp312-linux-amd64, cp312-linux-arm64",)
    assert not verdict(result, "uv-sync").ok


def test_x86_only_wheels_are_missing_for_arm64(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files(**{NUMPY_ARM: None})))
    assert {t.target: t.missing for t in result.targets} == {
        "cp312-linux-amd64": (),
        "cp312-linux-arm64": ("numpy==2.4.1",),
    }
    assert verdict(result, "pip").reason == "numpy==2.4.1 has no wheel for cp312-linux-arm64"


def test_marker_limits_a_pin_to_its_architecture(tmp_path: Path) -> None:
    requirements = REQUIREMENTS.replace("numpy==2.4.1", "numpy==2.4.1 ; platform_machine == 'x86_64'")
    result = inspect_package(build(tmp_path, offline_files(**{"requirements.txt": requirements, NUMPY_ARM: None})))
    assert verdict(result, "uv-pip").ok


def test_wheels_outside_find_links_are_not_seen(tmp_path: Path) -> None:
    moved = {NUMPY_ARM: None, NUMPY_ARM.replace("wheels/", "lib/"): fake_wheel()}
    result = inspect_package(build(tmp_path, offline_files(**moved)))
    assert result.wheel_dirs == ("lib", "wheels")
    assert result.targets[1].missing == ()  # it is inside, just not where find-links points
    assert verdict(result, "uv-pip").reason == "numpy==2.4.1 has no wheel for cp312-linux-arm64"


def test_invalid_requirement_fails_the_requirements_path(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files(**{"requirements.txt": "dify_plugin==b65\n"})))
    assert "invalid requirement 'dify_plugin==b65'" in verdict(result, "pip").reason
    assert any("dify_plugin==b65" in problem for problem in result.problems)
    assert verdict(result, "uv-sync").ok


def test_garbage_zip_comment_is_a_problem_not_a_signature(tmp_path: Path) -> None:
    root = make_plugin(tmp_path / "src", {"manifest.yaml": manifest_yaml(), "requirements.txt": REQUIREMENTS})
    package = write_package(root, tmp_path / "demo.difypkg", comment=b"made by some zip tool").path
    result = inspect_package(package)
    assert not result.signed
    assert any("not a Dify signature" in problem for problem in result.problems)


def test_sdist_inside_is_a_problem(tmp_path: Path) -> None:
    result = inspect_package(build(tmp_path, offline_files(**{"wheels/crcmod-1.7.tar.gz": "not really"})))
    assert result.sdists == ("wheels/crcmod-1.7.tar.gz",)
    assert any(p.startswith("wheels/crcmod-1.7.tar.gz: an sdist") for p in result.problems)


def test_original_package_goes_online(tmp_path: Path) -> None:
    files = {"manifest.yaml": manifest_yaml(), "requirements.txt": "dify_plugin==0.5.1\n"}
    result = inspect_package(build(tmp_path, files))
    assert verdict(result, "uv-pip").reasons[0] == "will go online: requirements.txt has no --no-index"
    assert verdict(result, "uv-sync").command == "uv pip install -r requirements.txt"
    assert result.targets[0].missing == ("dify_plugin==0.5.1",)
    assert result.wheels == () and not result.signed


def test_pyproject_only_package_uses_sync_for_mirror(tmp_path: Path) -> None:
    files = offline_files(**{"requirements.txt": None})
    result = inspect_package(build(tmp_path, files))
    assert verdict(result, "uv-pip").reason == "requirements.txt is missing; this daemon version installs only from it"
    assert verdict(result, "mirror").command == "uv sync --no-dev --frozen -i $PIP_MIRROR_URL"
    assert verdict(result, "mirror").ok


def test_signed_package_and_category(tmp_path: Path) -> None:
    from dify_repack.signing import generate_keypair, sign_package

    private, _ = generate_keypair(tmp_path / "keys" / "test", bits=2048)
    package = build(tmp_path, offline_files())
    sign_package(package, private, package, category="partner", now=1_760_000_000)
    result = inspect_package(package)
    assert (result.signed, result.category, result.signature_time) == (True, "partner", 1_760_000_000)
    assert not any(line.startswith("FORCE_VERIFYING_SIGNATURE") for line in result.settings)


def test_upload_settings_name_each_limit() -> None:
    assert upload_settings(MIB, 2 * MIB, signed=True) == ()
    big = upload_settings(16 * MIB, 60 * MIB, signed=False)
    assert [line.split("=")[0] for line in big] == [
        "FORCE_VERIFYING_SIGNATURE",
        "PLUGIN_MAX_PACKAGE_SIZE",
        "NGINX_CLIENT_MAX_BODY_SIZE",
    ]
    assert big[1].startswith(f"PLUGIN_MAX_PACKAGE_SIZE={61 * MIB} ")


def test_json_has_schema_and_stable_keys(tmp_path: Path) -> None:
    payload = inspect_package(build(tmp_path, offline_files())).to_json()
    assert json.loads(json.dumps(payload)) == payload
    assert payload["schema"] == SCHEMA == 1
    assert list(payload) == [
        "schema",
        "package",
        "identifier",
        "checksum",
        "manifest",
        "signature",
        "entries",
        "dependency_files",
        "wheels",
        "sizes",
        "settings",
        "problems",
        "verdicts",
    ]
    assert list(payload["verdicts"]) == ["pip", "uv-pip", "uv-sync", "uv-sync-frozen", "mirror"]
    assert payload["verdicts"]["pip"]["ok"] is True
    assert payload["wheels"]["targets"]["cp312-linux-arm64"]["missing"] == []


def test_bad_zip_raises_package_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.difypkg"
    bad.write_bytes(b"this is not a zip")
    with pytest.raises(PackageError, match=r"not a readable \.difypkg"):
        inspect_package(bad)


def test_cli_summary_and_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    package = build(tmp_path, offline_files(**{"uv.lock": REMOTE_LOCK}))
    assert main(["inspect", str(package)]) == ExitCode.OK  # verdicts inform; verify is the proof
    out = capsys.readouterr().out
    assert f"tester/demo:0.1.0@{daemon_checksum(package)}" in out
    assert "uv-sync-frozen" in out and "remote index" in out and "dify-repack verify" in out

    assert main(["inspect", "--json", str(package)]) == ExitCode.OK
    payload = json.loads(capsys.readouterr().out)
    assert payload["schema"] == 1 and payload["verdicts"]["uv-sync-frozen"]["ok"] is False


def test_cli_summary_of_a_good_package(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(build(tmp_path, offline_files()))]) == ExitCode.OK
    out = capsys.readouterr().out
    assert out.count("  ok  ") == 5 and "FAIL" not in out and "same reasons" not in out
    assert "FORCE_VERIFYING_SIGNATURE=false" in out  # unsigned: the one setting this upload needs


def test_cli_bad_zip_is_a_one_line_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.difypkg"
    bad.write_bytes(b"PK\x03\x04 truncated")
    assert main(["inspect", str(bad)]) == ExitCode.BAD_PACKAGE
    captured = capsys.readouterr()
    assert captured.out == ""
    error_lines = [line for line in captured.err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "bad.difypkg" in error_lines[0]

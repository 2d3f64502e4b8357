"""verify against real installs with the network cut (``unshare -n``): each known way a package breaks offline
(DAEMON-FACTS §4–§5, UV-PIP-FACTS) must fail at the profile and step that the daemon would fail at, and a package
written by ``pack`` must pass every profile up to the plugin's first heartbeat.

Good packages come from ``pack`` against the local index; broken ones are derived from them by rewriting files
of the extracted package and zipping it again. Only our own uv is used (no download), except in the test
marked ``network``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import tomlkit
from tomlkit.items import Table

from builders import LocalIndex, make_plugin, make_sdist, make_wheel, manifest_yaml
from dify_repack import files
from dify_repack.cli import main
from dify_repack.errors import VerificationError
from dify_repack.files import scratch_parent
from dify_repack.package import extract_package, write_package
from dify_repack.packing import PackOptions, pack
from dify_repack.replay import timed
from dify_repack.report import NullReporter
from dify_repack.resolve import Indexes
from dify_repack.runner import clean_env, run
from dify_repack.uvbin import uv_bin
from dify_repack.verify import PROFILES, Check, Step, VerifyOptions, VerifyReport, require_pass, verify_package

PYPROJECT = """\
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.11"
dependencies = ["dify_plugin==0.7.4", "fastmath"]
"""
REQUIREMENTS = "dify_plugin==0.7.4\nfastmath\n"
FASTMATH_X86 = "fastmath-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl"


@pytest.fixture(scope="module")
def own_uv() -> str:
    """Our own uv's version: ``fetch_uv`` returns our binary for it, so no test downloads a uv."""
    return run([uv_bin(), "--version"]).stdout.split()[1]


@pytest.fixture(scope="module")
def clean_environ() -> Iterator[None]:
    """What the function-scoped conftest fixture does, for the module-scoped packs below."""
    with pytest.MonkeyPatch.context() as patch:
        for key in list(os.environ):
            if key.startswith(("PIP_", "UV_")) or key == "DIFY_REPACK_CACHE_DIR":
                patch.delenv(key)
        patch.setenv("PIP_CONFIG_FILE", os.devnull)
        yield


def _pack(index: LocalIndex, base: Path, files: dict[str, str]) -> Path:
    plugin = make_plugin(base / "src", files)
    return pack(
        plugin, PackOptions(output_dir=base / "out", indexes=Indexes(index.url), cache_dir=base / "cache")
    ).output


@pytest.fixture(scope="module")
def good(index: LocalIndex, tmp_path_factory: pytest.TempPathFactory, clean_environ: None) -> Path:
    """requirements.txt + pyproject.toml + uv.lock, as pack writes them, for amd64."""
    return _pack(
        index,
        tmp_path_factory.mktemp("good"),
        {"requirements.txt": REQUIREMENTS, "pyproject.toml": PYPROJECT},
    )


def derive(package: Path, dest: Path, mutate: Callable[[Path], None]) -> Path:
    """Extract ``package``, let ``mutate`` rewrite the files, and zip the result to ``dest`` as pack does."""
    root = dest.parent / f"{dest.stem}.tree"
    extract_package(package, root)
    mutate(root)
    write_package(root, dest)
    return dest


def edit_pyproject(root: Path, edit: Callable[[tomlkit.TOMLDocument], None]) -> None:
    path = root / "pyproject.toml"
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    edit(document)
    path.write_text(tomlkit.dumps(document), encoding="utf-8")


def uv_table(document: tomlkit.TOMLDocument) -> Table:
    tool = document["tool"]
    assert isinstance(tool, Table)
    table = tool["uv"]
    assert isinstance(table, Table)
    return table


def verify(
    package: Path,
    cache: Path,
    uv: str,
    profiles: Sequence[str],
    *,
    start: bool = False,
    arches: Sequence[str] = ("amd64",),
) -> VerifyReport:
    options = VerifyOptions(profiles=profiles, uv_versions=[uv], arches=list(arches), cache_dir=cache, start=start)
    report = verify_package(package, options)
    assert report.isolation.startswith("unshare"), report.isolation
    assert report.isolated
    return report


def only_failure(report: VerifyReport, profile: str) -> tuple[Check, Step]:
    """The one failing check, which must be ``profile``'s, and its failing step."""
    failed = [check for check in report.checks if not check.ok]
    assert [check.profile for check in failed] == [profile], report.to_json()
    assert not report.ok
    step = next(step for step in failed[0].steps if not step.ok and step.fatal)
    with pytest.raises(VerificationError, match=f"^{re.escape(profile)} .* failed at {step.name}"):
        require_pass(report)
    return failed[0], step


def test_correct_package_passes_every_profile_up_to_the_heartbeat(good: Path, cache_dir: Path, own_uv: str) -> None:
    with zipfile.ZipFile(good) as archive:
        assert {"requirements.txt", "pyproject.toml", "uv.lock"} <= set(archive.namelist())
    report = verify(good, cache_dir, own_uv, list(PROFILES), start=True)
    assert report.ok, report.to_json()
    require_pass(report)
    assert [(check.profile, check.uv, check.mode) for check in report.checks] == [
        ("pip", "pip", "live"),
        *[(profile, own_uv, "live") for profile in PROFILES if profile != "pip"],
    ]
    for check in report.checks:
        assert [step.name for step in check.steps] == ["venv", "install", "compile", "import", "start"]
        assert all(step.ok for step in check.steps), check
    commands = {check.profile: check.command for check in report.checks}
    assert commands["uv-sync"].startswith("uv sync --no-dev") and "--frozen" not in commands["uv-sync"]
    assert commands["uv-sync-frozen"].endswith("--frozen")
    assert "-r requirements.txt" in commands["mirror"] and "-i http://127.0.0.1:9/simple" in commands["mirror"]
    payload = report.to_json()
    assert payload["schema"] == 1 and payload["status"] == "success" and payload["isolated"] is True


def test_lock_resolved_against_an_index_fails_frozen_sync(
    good: Path, index: LocalIndex, tmp_path: Path, cache_dir: Path, own_uv: str, python312: Path
) -> None:
    def lock_online(root: Path) -> None:
        # The lock a developer writes with network access: sources and wheel URLs on an index.
        online = tmp_path / "online"
        online.mkdir()
        shutil.copy(root / "pyproject.toml", online)

        def use_the_index(document: tomlkit.TOMLDocument) -> None:
            del uv_table(document)["no-index"]
            del uv_table(document)["find-links"]

        edit_pyproject(online, use_the_index)
        argv = [uv_bin(), "lock", "--index-url", index.url, "--python", str(python312)]
        result = run(argv, cwd=online, env=clean_env({"UV_CACHE_DIR": str(cache_dir / "lock")}), timeout=120)
        assert result.returncode == 0, result.output
        lock = (online / "uv.lock").read_text()
        assert f'registry = "{index.url}"' in lock and "url = " in lock
        shutil.copy(online / "uv.lock", root / "uv.lock")

    package = derive(good, tmp_path / "online-lock.difypkg", lock_online)
    report = verify(package, cache_dir, own_uv, ["uv-sync-frozen"])
    check, step = only_failure(report, "uv-sync-frozen")
    assert check.command.endswith("--frozen")
    assert step.name == "install"
    assert "Failed to download `" in step.detail  # which wheel uv fetches first varies
    assert "Network is unreachable" in step.detail  # it went online, and the namespace cut it


def test_no_environments_needs_windows_only_wheels(index: LocalIndex, tmp_path: Path, own_uv: str) -> None:
    # Packed for both architectures, so the Windows-only dependency is the only wheel not shipped.
    packed = _pack(
        index,
        tmp_path,
        {
            "manifest.yaml": manifest_yaml(arch=("amd64", "arm64")),
            "pyproject.toml": '[project]\nname = "demo"\nversion = "0.1.0"\n'
            'dependencies = ["dify_plugin==0.7.4", "multiplatform"]\n',
        },
    )

    def universal(root: Path) -> None:
        (root / "uv.lock").unlink()
        edit_pyproject(root, lambda document: uv_table(document).pop("environments"))

    package = derive(packed, tmp_path / "universal.difypkg", universal)
    report = verify(package, tmp_path / "cache", own_uv, ["uv-sync"])
    _, step = only_failure(report, "uv-sync")
    assert step.name == "install"
    assert "no versions of winonly{sys_platform == 'win32'}" in step.detail


def test_environments_without_python_bound_fork_for_newer_pythons(
    good: Path, tmp_path: Path, cache_dir: Path, own_uv: str
) -> None:
    # uv forks a universal resolution only where requirements differ by Python version, as pandas' do on
    # numpy; ``tablekit`` stands in for such a dependency of the plugin, ``fastmath`` (cp312 wheels only) for numpy.
    def relocked(*, with_tablekit: bool, environments: list[str] | None) -> Callable[[Path], None]:
        def mutate(root: Path) -> None:
            (root / "uv.lock").unlink()
            if with_tablekit:
                requires = ("fastmath>=1; python_version < '3.13'", "fastmath>=2; python_version >= '3.13'")
                make_wheel(root / "wheels", "tablekit", "1.0.0", requires=requires)

            def edit(document: tomlkit.TOMLDocument) -> None:
                project = document["project"]
                assert isinstance(project, Table)
                if with_tablekit:
                    project["dependencies"] = ["dify_plugin==0.7.4", "tablekit"]
                if environments is not None:
                    uv_table(document)["environments"] = environments

            edit_pyproject(root, edit)

        return mutate

    def uv_sync(name: str, mutate: Callable[[Path], None]) -> VerifyReport:
        return verify(derive(good, tmp_path / f"{name}.difypkg", mutate), cache_dir, own_uv, ["uv-sync"])

    linux_only = ["sys_platform == 'linux'"]
    report = uv_sync("forks", relocked(with_tablekit=True, environments=linux_only))
    _, step = only_failure(report, "uv-sync")
    assert step.name == "install"
    assert "split (markers: python_full_version >= '3.13'" in step.detail
    assert "fastmath" in step.detail and "has no Linux-compatible wheels" in step.detail
    # The same package with the environments pack writes (bounded to 3.12) installs.
    assert uv_sync("bounded", relocked(with_tablekit=True, environments=None)).ok
    # Without a dependency that makes uv fork, the open bound alone does not break it (uv 0.13.9).
    assert uv_sync("no-fork", relocked(with_tablekit=False, environments=linux_only)).ok


def test_dependency_group_without_its_wheel_fails_even_with_no_dev(
    good: Path, tmp_path: Path, cache_dir: Path, own_uv: str
) -> None:
    def add_dev_group(root: Path) -> None:
        (root / "uv.lock").unlink()

        def edit(document: tomlkit.TOMLDocument) -> None:
            groups = tomlkit.table()
            groups["dev"] = ["devtool"]
            document["dependency-groups"] = groups

        edit_pyproject(root, edit)

    package = derive(good, tmp_path / "dev-group.difypkg", add_dev_group)
    report = verify(package, cache_dir, own_uv, ["uv-sync"])
    check, step = only_failure(report, "uv-sync")
    assert "--no-dev" in check.command
    assert step.name == "install"
    assert "devtool was not found" in step.detail and "demo:dev" in step.detail


def test_wheels_for_another_python_fail_uv_pip(good: Path, tmp_path: Path, cache_dir: Path, own_uv: str) -> None:
    def cp313_only(root: Path) -> None:
        (root / "wheels" / FASTMATH_X86).unlink()
        make_wheel(root / "wheels", "fastmath", "2.0.0", tag="cp313-cp313-manylinux_2_28_x86_64")
        assert "fastmath==2.0.0" in (root / "requirements.txt").read_text().splitlines()

    package = derive(good, tmp_path / "cp313.difypkg", cp313_only)
    report = verify(package, cache_dir, own_uv, ["uv-pip"])
    _, step = only_failure(report, "uv-pip")
    assert step.name == "install"
    assert "fastmath==2.0.0 has no wheels with a matching Python" in step.detail and "cp313" in step.detail


def test_x86_64_wheels_only_fail_the_static_arm64_check(good: Path, cache_dir: Path, own_uv: str) -> None:
    report = verify(good, cache_dir, own_uv, ["uv-pip"], arches=["arm64"])
    check, step = only_failure(report, "requirements")
    assert (check.mode, check.target) == ("static", "cp312-linux-arm64")
    assert step.name == "resolve"
    assert "fastmath==2.0.0 has no wheels with a matching platform tag" in step.detail
    # uv names either the tag it wanted or the tags it found, depending on how it words the hint.
    assert "manylinux_2_28_aarch64" in step.detail or "platform: `manylinux_2_28_x86_64`" in step.detail


def test_sdist_needing_a_compiler_fails_uv_pip(good: Path, tmp_path: Path, cache_dir: Path, own_uv: str) -> None:
    def ship_an_sdist(root: Path) -> None:
        make_sdist(root / "wheels", "needscompiler", "1.0.0", mode="broken")
        requirements = root / "requirements.txt"
        requirements.write_text(requirements.read_text() + "needscompiler==1.0.0\n")

    package = derive(good, tmp_path / "sdist.difypkg", ship_an_sdist)
    report = verify(package, cache_dir, own_uv, ["uv-pip"])
    _, step = only_failure(report, "uv-pip")
    assert step.name == "install"
    assert "Failed to build `needscompiler==1.0.0`" in step.detail
    assert "gcc" in step.detail


def test_directory_entry_is_reported(good: Path, tmp_path: Path, cache_dir: Path, own_uv: str) -> None:
    package = tmp_path / "with-dir.difypkg"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(package, "w") as target:
        target.writestr(zipfile.ZipInfo("wheels/"), b"")
        for info in source.infolist():
            target.writestr(info, source.read(info))
    report = verify(package, cache_dir, own_uv, ["uv-pip"])
    _, step = only_failure(report, "package")
    assert step.name == "entries"
    assert "wheels/" in step.detail and "is a directory" in step.detail
    # The install itself works: extraction skips directory entries, only the upload is rejected.
    assert [c.ok for c in report.checks if c.profile == "uv-pip"] == [True]


@pytest.mark.network
def test_unknown_uv_key_makes_an_old_uv_go_online(good: Path, tmp_path: Path, cache_dir: Path) -> None:
    def newer_key(root: Path) -> None:
        (root / "uv.lock").unlink()
        edit_pyproject(root, lambda document: uv_table(document).update({"required-environments": []}))

    package = derive(good, tmp_path / "required-environments.difypkg", newer_key)
    report = verify(package, cache_dir, "0.5.31", ["uv-sync"])
    check, step = only_failure(report, "uv-sync")
    assert check.uv == "0.5.31"
    assert step.name == "install"
    # uv 0.5.31 drops the whole [tool.uv] table (no-index, find-links too) and asks the public index.
    assert "Failed to parse `pyproject.toml` during settings discovery" in step.detail
    assert "unknown field `required-environments`" in step.detail
    assert "https://pypi.org/simple/" in step.detail


def test_cli_verify_json_success_and_failure(
    good: Path, tmp_path: Path, cache_dir: Path, own_uv: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["--uv", own_uv, "--profile", "uv-pip", "--json", "--cache-dir", str(cache_dir)]
    assert main(["verify", str(good), *base]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert (payload["schema"], payload["status"], payload["isolated"]) == (1, "success", True)
    assert [check["profile"] for check in payload["checks"]] == ["uv-pip"]

    def drop_a_wheel(root: Path) -> None:
        (root / "wheels" / FASTMATH_X86).unlink()

    broken = derive(good, tmp_path / "missing-wheel.difypkg", drop_a_wheel)
    assert main(["verify", str(broken), *base]) == 7
    payload = json.loads(capsys.readouterr().out)
    assert payload["status"] == "error"
    assert [check["ok"] for check in payload["checks"]] == [False]


def test_start_failure_names_the_exception_not_the_shutdown_noise() -> None:
    from dify_repack.replay import python_error

    stderr = (
        'Traceback (most recent call last):\n  File "main.py", line 3\n'
        "pydantic_core.ValidationError: 2 validation errors\n\nThe above exception was the direct cause:\n\n"
        'Traceback (most recent call last):\n  File "main.py", line 3\n'
        "ValueError: Error loading plugin configuration\n"
        "Exception ignored in: <function _removeHandlerRef at 0x1>\nTraceback (most recent call last):\n"
        '  File "gevent/thread.py", line 76\nRuntimeError: greenlet is being finalized\n'
    )
    assert python_error(stderr) == "ValueError: Error loading plugin configuration"


# What verification costs: identical replays run once, import/start once per identical environment,
# a passed verification is remembered, and the daemon's watchdogs apply.


def test_replays_running_the_same_commands_on_the_same_files_run_once(
    index: LocalIndex, tmp_path: Path, cache_dir: Path, own_uv: str
) -> None:
    # Without pyproject.toml, uv-sync and uv-sync-frozen run `uv pip install -r requirements.txt` like uv-pip;
    # mirror adds `-i`: a different command, replayed on its own.
    package = _pack(index, tmp_path, {"requirements.txt": REQUIREMENTS})
    report = verify(package, cache_dir, own_uv, ["uv-pip", "uv-sync", "uv-sync-frozen", "mirror"])
    assert report.ok, report.to_json()
    assert [(check.profile, check.same_as) for check in report.checks] == [
        ("uv-pip", ""),
        ("uv-sync", "uv-pip"),
        ("uv-sync-frozen", "uv-pip"),
        ("mirror", ""),
    ]
    assert report.checks[1].steps == report.checks[0].steps
    # mirror installed the same files as uv-pip: import ran once, on whichever environment was ready first.
    imports = {check.profile: {step.name: step for step in check.steps}["import"] for check in report.checks}
    ran = [profile for profile in ("uv-pip", "mirror") if not imports[profile].same_as]
    assert len(ran) == 1
    other = "mirror" if ran == ["uv-pip"] else "uv-pip"
    assert imports[other].same_as == f"{ran[0]} uv {own_uv}"
    assert all(step.same_as == "" for step in report.checks[3].steps if step.name != "import")


def test_a_lone_uv_replay_does_not_fingerprint_its_environment(
    good: Path, cache_dir: Path, own_uv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Hashing every installed file only pays when another replay may share import and start.
    import dify_repack.replay as replay_module

    def fingerprint(venv: Path) -> str:
        raise AssertionError("no other uv replay to share with")

    monkeypatch.setattr(replay_module, "environment_fingerprint", fingerprint)
    assert verify(good, cache_dir, own_uv, ["pip", "uv-pip"]).ok


def test_a_passed_verification_of_the_same_files_and_settings_is_remembered(
    good: Path, tmp_path: Path, cache_dir: Path, own_uv: str
) -> None:
    options = VerifyOptions(profiles=["uv-pip"], uv_versions=[own_uv], arches=["amd64"], cache_dir=cache_dir)
    first = verify_package(good, replace(options, start=False, reuse=True))
    assert first.ok and not first.remembered
    again = verify_package(good, replace(options, start=False, reuse=True))
    assert again.remembered and again.checks == first.checks and again.identifier == first.identifier
    # Other settings, another package, or no reuse: replayed.
    assert not verify_package(good, replace(options, start=False)).remembered
    assert not verify_package(good, replace(options, start=True, start_timeout=60, reuse=True)).remembered
    other = derive(good, tmp_path / "other.difypkg", lambda root: (root / "README.md").write_text("changed\n"))
    assert not verify_package(other, replace(options, start=False, reuse=True)).remembered
    # The same files (the daemon's checksum) with a directory entry added: the daemon rejects that upload.
    with_dir = tmp_path / "with-dir.difypkg"
    shutil.copy(good, with_dir)
    with zipfile.ZipFile(with_dir, "a") as archive:
        archive.writestr(zipfile.ZipInfo("wheels/"), b"")
    assert not verify_package(with_dir, replace(options, start=False, reuse=True)).ok


def test_pack_remembers_its_verification_and_reverify_replays(
    index: LocalIndex, tmp_path: Path, cache_dir: Path, own_uv: str, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": REQUIREMENTS})
    argv = ["pack", str(plugin), "-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    argv += ["--uv", own_uv, "--profile", "uv-pip", "--profile", "mirror", "--no-start", "--json"]
    remembered = []
    for extra in ([], [], ["--reverify"]):
        assert main([*argv, *extra]) == 0
        verification = json.loads(capsys.readouterr().out)["results"][0]["verification"]
        assert verification["ok"] and verification["checks"] == 2
        remembered.append(verification["remembered"])
    assert remembered[0] is None and remembered[1] and remembered[2] is None


def _work_folders(records: list[logging.LogRecord]) -> set[str]:
    """The folders the logged replay commands ran in hold the verify work folder: their parents."""
    found = (re.search(r"\(in (.*?)/dify-repack-verify-", record.getMessage()) for record in records)
    return {match.group(1) for match in found if match}


def test_replays_work_in_ram_when_it_has_room_and_in_tmpdir_when_it_is_set(
    good: Path,
    tmp_path: Path,
    cache_dir: Path,
    own_uv: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "dify_repack.commands")
    monkeypatch.delenv("TMPDIR", raising=False)
    assert verify(good, cache_dir, own_uv, ["uv-pip"]).ok
    assert _work_folders(caplog.records) == {str(scratch_parent(1 << 20) or tempfile.gettempdir())}
    caplog.clear()
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # tempfile read TMPDIR once, before this test
    assert verify(good, cache_dir, own_uv, ["uv-pip"]).ok
    assert _work_folders(caplog.records) == {str(tmp_path)}
    assert not list(tmp_path.glob("dify-repack-verify-*"))  # and nothing is left there


class _Statvfs(NamedTuple):
    f_flag: int
    f_bavail: int
    f_frsize: int = 4096


@pytest.mark.parametrize(
    ("flags", "free_blocks", "needed", "chosen"),
    [
        (0, 1 << 20, 1 << 30, Path("/dev/shm")),  # 4 GiB free, 1 GiB needed
        (os.ST_NOEXEC, 1 << 20, 1 << 20, None),  # a venv could not run its scripts or load native code there
        (os.ST_RDONLY, 1 << 20, 1 << 20, None),
        (0, 1 << 10, 8 << 20, None),  # 4 MiB free
        (0, 1 << 30, 40 << 30, None),  # more than half the memory available (64 GiB below)
    ],
)
def test_ram_is_chosen_only_when_it_can_run_programs_and_has_room(
    monkeypatch: pytest.MonkeyPatch, flags: int, free_blocks: int, needed: int, chosen: Path | None
) -> None:
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(flags, free_blocks))
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    monkeypatch.setattr(files, "_memory_available", lambda: 64 << 30)
    assert scratch_parent(needed) == chosen
    for name in ("TMPDIR", "TEMP", "TMP"):
        monkeypatch.setenv(name, "/somewhere")
        assert scratch_parent(needed) is None  # the user's choice wins, however Python would read it
        monkeypatch.delenv(name)


CGROUPS = {
    # cgroup v2: the limit is on the job's parent group; the job's own says "max".
    "v2": (
        "0::/ci/job\n",
        {"ci/memory.max": "1073741824", "ci/memory.current": "629145600", "ci/job/memory.max": "max"},
    ),
    # cgroup v1 in a container: the path is the host's view, the container's group is the mounted root.
    "v1": (
        "4:memory:/docker/abc\n1:cpu,cpuacct:/\n",
        {"memory/memory.limit_in_bytes": "1073741824", "memory/memory.usage_in_bytes": "629145600"},
    ),
}


@pytest.mark.parametrize(("proc_cgroup", "tree"), CGROUPS.values(), ids=CGROUPS.keys())
def test_ram_counts_only_the_memory_a_container_may_still_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, proc_cgroup: str, tree: dict[str, str]
) -> None:
    # Files in RAM count against a control group's limit: past it the kernel kills the run, whatever the machine has.
    (tmp_path / "proc" / "self").mkdir(parents=True)
    (tmp_path / "proc" / "meminfo").write_text("MemTotal: 134217728 kB\nMemAvailable: 67108864 kB\n")
    (tmp_path / "proc" / "self" / "cgroup").write_text(proc_cgroup)
    for name, text in tree.items():
        (tmp_path / "cgroup" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "cgroup" / name).write_text(text + "\n")
    monkeypatch.setattr(files, "PROC", tmp_path / "proc")
    monkeypatch.setattr(files, "CGROUP", tmp_path / "cgroup")
    monkeypatch.delenv("TMPDIR", raising=False)
    monkeypatch.setattr(os, "statvfs", lambda path: _Statvfs(0, 1 << 20))  # 4 GiB free in /dev/shm
    monkeypatch.setattr(os, "access", lambda path, mode: True)

    assert files._memory_available() == 424 << 20  # 1 GiB limit, 600 MiB used; not the machine's 64 GiB
    assert scratch_parent(200 << 20) == Path("/dev/shm")
    assert scratch_parent(300 << 20) is None  # more than half of what the container has left


def test_a_work_folder_left_by_a_killed_run_is_removed_by_the_next_one_and_one_in_use_is_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # In RAM a folder nobody removes holds memory until the next reboot. A run that is killed (or ended by the last
    # resort after an interrupt) cannot remove its own; the lock it held goes with it, and the next run removes it.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    script = (
        "import os, signal, sys\nfrom dify_repack.files import scratch_folder\n"
        "with scratch_folder('dify-repack-verify-', 1) as work:\n"
        "    (work / 'live').mkdir()\n    print(work, flush=True)\n"
        "    os.kill(os.getpid(), signal.SIGKILL) if sys.argv[1] == 'kill' else sys.stdin.read()\n"
    )
    running = subprocess.Popen(
        [sys.executable, "-c", script, "wait"], env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert running.stdout is not None
        in_use = Path(running.stdout.readline().strip())
        killed = subprocess.run([sys.executable, "-c", script, "kill"], env=env, capture_output=True, text=True)
        left = Path(killed.stdout.strip())
        assert left.is_dir() and in_use.is_dir()  # the killed run did not remove a folder in use either
        monkeypatch.setenv("TMPDIR", str(tmp_path))
        monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))

        with files.scratch_folder("dify-repack-verify-", 1) as work:
            assert not left.exists()
            assert in_use.is_dir() and work.is_dir()
        assert not work.exists()
    finally:
        running.communicate("")
    assert not in_use.exists()


def _silent_step(script: str, **limits: float) -> Step:
    return timed("install", [sys.executable, "-c", script], cwd=Path.cwd(), env=clean_env(), **limits)


def test_an_install_silent_for_the_idle_limit_is_killed_like_the_daemon_does() -> None:
    script = "import time; print('Installing wheel-with-21785-files', flush=True); time.sleep(60)"
    started = time.monotonic()
    step = _silent_step(script, timeout=30, idle_timeout=2)
    assert time.monotonic() - started < 15
    assert not step.ok
    assert step.detail.startswith('killed after 2 s without output after "Installing wheel-with-21785-files"')


def test_an_install_that_keeps_talking_is_killed_at_the_overall_limit() -> None:
    script = "import time\nwhile True:\n    print('still going', flush=True); time.sleep(0.1)"
    step = _silent_step(script, timeout=1.5, idle_timeout=1)
    assert not step.ok and step.detail.startswith("killed after 2 s, the daemon's limit")


def test_a_silence_above_half_the_idle_limit_passes_with_a_warning_naming_its_cause() -> None:
    script = "import time; print('Unpacking huge-1.0', flush=True); time.sleep(2); print('Installed 1 package')"
    step = _silent_step(script, timeout=30, idle_timeout=3)
    assert step.ok
    assert step.warning.startswith('install was silent for 2 s after "Unpacking huge-1.0"')
    assert "kills an install after 3 s without output" in step.warning


def test_verify_applies_the_idle_limit_to_the_install_and_reports_the_near_miss(
    good: Path, cache_dir: Path, own_uv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dify_repack.replay as replay_module

    def silent_install(profile: str, root: Path, uv: Path | None, mirror: str = "") -> list[str]:
        return [
            sys.executable,
            "-c",
            "import time; print('Preparing', flush=True); time.sleep(float(open('s').read()))",
        ]

    monkeypatch.setattr(replay_module, "install_command", silent_install)
    warnings: list[str] = []

    class Recorder(NullReporter):
        def warn(self, message: str) -> None:
            warnings.append(message)

    options = VerifyOptions(
        profiles=["uv-pip"], uv_versions=[own_uv], arches=["amd64"], cache_dir=cache_dir, start=False
    )
    for seconds, limit in (("1.5", 2.5), ("5", 0.5)):
        monkeypatch.setattr(replay_module, "clone", _clone_with_sleep(seconds))
        report = verify_package(good, replace(options, install_idle_timeout=limit), Recorder())
        install = next(step for step in report.checks[0].steps if step.name == "install")
        if seconds == "1.5":
            assert install.ok  # it installed nothing, so import fails: only the watchdog matters here
            assert report.warnings and warnings == list(report.warnings)
            assert warnings[0].startswith(f"uv-pip ({own_uv}, cp312-linux-amd64): install was silent for")
        else:
            assert not install.ok and "without output" in install.detail


def _clone_with_sleep(seconds: str) -> Callable[[Path, Path], None]:
    from dify_repack.replay import clone

    def clone_and_write(tree: Path, root: Path) -> None:
        clone(tree, root)
        (root / "s").write_text(seconds)

    return clone_and_write


def test_a_macos_or_windows_host_on_the_same_cpu_gets_static_checks_only(
    good: Path, cache_dir: Path, own_uv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its CPython would install wheels for itself, not the Linux wheels the daemon uses: no live replay proves that.
    monkeypatch.setattr(sys, "platform", "darwin")
    report = verify(good, cache_dir, own_uv, ["uv-pip"])
    assert report.checks and {check.mode for check in report.checks} == {"static"}
    assert report.ok


def test_a_plugin_logging_a_lot_on_stderr_still_reaches_its_heartbeat(tmp_path: Path) -> None:
    from types import SimpleNamespace
    from typing import Any, cast

    from dify_repack.replay import start_plugin

    (tmp_path / ".venv" / "bin").mkdir(parents=True)
    (tmp_path / ".venv" / "bin" / "python").symlink_to(sys.executable)
    # More than a pipe holds, before the heartbeat: nobody reading stderr would block the plugin here.
    (tmp_path / "noisy.py").write_text(
        "import json, sys\nsys.stderr.write('log line\\n' * 100_000)\nsys.stderr.flush()\n"
        "print(json.dumps({'event': 'heartbeat'}), flush=True)\nimport time\ntime.sleep(30)\n",
        encoding="utf-8",
    )
    manifest = cast(Any, SimpleNamespace(entrypoint="noisy"))
    step = start_plugin(tmp_path, manifest, [], clean_env(), timeout=20)
    assert step.ok, step.detail


def test_a_relative_cache_dir_works_from_the_replays_own_folder(
    good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A uv version already fetched into the cache; the replay runs it with the plugin's folder as cwd.
    monkeypatch.chdir(tmp_path)
    fetched = Path("cache") / "uv" / "0.0.1" / "bin" / "uv"
    fetched.parent.mkdir(parents=True)
    shutil.copy(uv_bin(), fetched)
    options = VerifyOptions(profiles=["uv-pip"], uv_versions=["0.0.1"], arches=["amd64"], cache_dir=Path("cache"))
    report = verify_package(good, options)
    assert [(check.uv, check.ok) for check in report.checks] == [("0.0.1", True)]


@pytest.mark.parametrize("outcome", ["installed", "failed", "interrupted"])
def test_fetching_a_uv_leaves_only_the_installed_version_in_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, outcome: str
) -> None:
    from dify_repack import uvbin
    from dify_repack.errors import Interrupted, NetworkError
    from dify_repack.runner import Completed

    def install(argv: Sequence[str], **kwargs: Any) -> Completed:
        if "--target" not in argv:
            return run(argv, **kwargs)  # our own uv, asked its version
        staging = Path(argv[argv.index("--target") + 1])
        (staging / "bin").mkdir()
        (staging / "bin" / "uv").write_text("")
        return Completed(tuple(map(str, argv)), 0 if outcome != "failed" else 2, "", "no such version")

    def version_of(binary: str) -> object:
        if not binary.startswith(str(tmp_path)):
            return asked(binary)  # our own uv
        if outcome == "interrupted":
            raise Interrupted()  # a stop request while the new uv says its version
        return uvbin.Version("0.0.2")

    asked = uvbin._version_of

    monkeypatch.setattr(uvbin, "run", install)
    monkeypatch.setattr(uvbin, "_version_of", version_of)
    if outcome == "installed":
        assert uvbin.fetch_uv("0.0.2", tmp_path) == tmp_path / "uv" / "0.0.2" / "bin" / "uv"
    else:
        with pytest.raises(NetworkError if outcome == "failed" else Interrupted):
            uvbin.fetch_uv("0.0.2", tmp_path)
    assert sorted(path.name for path in (tmp_path / "uv").iterdir()) == (["0.0.2"] if outcome == "installed" else [])


def test_without_unshare_the_replay_runs_offline_says_so_and_is_not_remembered(
    good: Path, cache_dir: Path, own_uv: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dify_repack.verify as verify_module

    monkeypatch.setattr(verify_module.shutil, "which", lambda name: None)
    options = VerifyOptions(profiles=["uv-pip"], uv_versions=[own_uv], arches=["amd64"], cache_dir=cache_dir)
    options = replace(options, start=False, reuse=True)
    for _ in range(2):
        report = verify_package(good, options)
        assert report.ok and not report.isolated and not report.remembered
        assert report.isolation == "none (uv offline mode)" and report.to_json()["isolated"] is False
        assert any(note.startswith("NO NETWORK ISOLATION") for note in report.notes)


def test_a_package_that_is_no_zip_is_refused_before_a_cpython_is_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dify_repack.verify as verify_module
    from dify_repack.errors import PackageError

    def provide_python(*_: object) -> Path:
        raise AssertionError("uv may install a CPython here, minutes of work for a package refused anyway")

    monkeypatch.setattr(verify_module, "provide_python", provide_python)
    truncated = tmp_path / "truncated.difypkg"
    truncated.write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(PackageError, match=r"not a readable \.difypkg"):
        verify_package(truncated, VerifyOptions(cache_dir=tmp_path / "cache"))


@pytest.mark.parametrize("url", ["http://mirror:99999/simple", "http://mirror:http/simple", "http://[::1/simple"])
def test_a_slim_packages_unusable_mirror_url_is_a_one_line_error(url: str) -> None:
    from dify_repack.errors import UsageError
    from dify_repack.mirror_serve import mirror_address

    with pytest.raises(UsageError, match="the mirror URL must be http://HOST"):
        mirror_address(url)

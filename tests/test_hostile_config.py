"""What a plugin's own uv and pip configuration may make the tool do on the packing machine: nothing outside its
temp folders, cache and output.

``pack`` runs uv in the plugin's folder (``uv lock``), and ``verify`` replays the daemon's installs there, where
uv reads ``[tool.uv]``, a ``uv.toml``, ``.python-version``, uv.lock and requirements-file options. Each setting
below names a place of this machine (a canary folder beside the plugin): ``pack`` must ship a package without it
and never let its own uv follow it; ``verify`` must refuse the package, naming the file, line and setting, before
anything runs. Real uv throughout, the local index for packages.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin
from dify_repack.package import extract_package, write_package
from dify_repack.requirements import tomllib
from dify_repack.uvbin import own_uv_version
from dify_repack.uvconfig import check_replay_config, config_risks
from hostile import Outcome, assert_refused, isolated_tmp, run

PYPROJECT = (
    '[project]\nname = "demo"\nversion = "0.1.0"\nrequires-python = ">=3.12"\ndependencies = ["dify_plugin==0.7.4"]\n'
)
# A build backend that leaves a mark when any installer asks it anything: proof that it never ran.
MARKING_BACKEND = (
    "import pathlib\n"
    "def _mark(*args, **kwargs):\n"
    "    pathlib.Path(__file__).with_name('RAN').write_text('ran')\n"
    "    raise SystemExit(1)\n"
    "get_requires_for_build_wheel = prepare_metadata_for_build_wheel = build_wheel = _mark\n"
)


@pytest.fixture
def host(tmp_path: Path) -> Path:
    """A folder of this machine, outside the plugin, that settings point at: a wheel folder, a project whose
    backend marks that it ran, and a program that marks that it ran."""
    folder = tmp_path / "host"
    (folder / "project").mkdir(parents=True)
    (folder / "project" / "pyproject.toml").write_text(
        '[build-system]\nrequires = []\nbuild-backend = "backend"\nbackend-path = ["."]\n'
        '[project]\nname = "evil"\nversion = "1.0"\n'
    )
    (folder / "project" / "backend.py").write_text(MARKING_BACKEND)
    program = folder / "python3"
    program.write_text(f"#!/bin/sh\necho ran > {folder}/PROGRAM-RAN\nexit 1\n")
    program.chmod(0o755)
    return folder


def _touched(host: Path) -> list[str]:
    """What appeared in ``host`` besides what the fixture put there."""
    made = {"project", "project/pyproject.toml", "project/backend.py", "python3"}
    return sorted(str(p.relative_to(host)) for p in host.rglob("*") if str(p.relative_to(host)) not in made)


def _pack(capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, plugin: Path, *args: str) -> Outcome:
    return run(
        capsys,
        "pack", plugin, "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--index-url", index.url,
        "--no-verify", "--json", *args,
    )  # fmt: skip


def _shipped(tmp_path: Path) -> dict[str, str]:
    """The text files of the one package in out/, by name (wheels left out)."""
    (package,) = (tmp_path / "out").glob("*.difypkg")
    with zipfile.ZipFile(package) as archive:
        return {name: archive.read(name).decode() for name in archive.namelist() if not name.endswith(".whl")}


# pack: the plugin's settings never reach its own uv, and never ship.


UV_TOMLS = {
    "find-links": 'find-links = ["{host}"]\n',
    "index-url-file": 'index-url = "file://{host}"\n',
    "source-path": '[sources]\nevil = {{ path = "{host}/project" }}\n',
    "pip-target": '[pip]\ntarget = "{host}/target"\nsystem = true\n',
    "cache-dir": 'cache-dir = "{host}/cache"\n',
}


@pytest.mark.parametrize("text", UV_TOMLS.values(), ids=UV_TOMLS.keys())
def test_a_uv_toml_is_left_out_of_the_package_and_never_read_while_packing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, host: Path, text: str
) -> None:
    # uv.toml wins over [tool.uv]: read by `uv lock` here, it would lock from the host folder (or fail).
    plugin = make_plugin(tmp_path / "src", {"pyproject.toml": PYPROJECT, "uv.toml": text.format(host=host)})

    outcome = _pack(capsys, tmp_path, index, plugin)

    assert outcome.code == 0, outcome.err
    notes = json.loads(outcome.out)["results"][0]["notes"]
    assert any(note.startswith("removed uv.toml: uv reads it instead of") for note in notes)
    shipped = _shipped(tmp_path)
    assert "uv.toml" not in shipped
    assert not any(str(host) in text for text in shipped.values())
    assert _touched(host) == []


def test_optional_dependencies_are_removed_and_never_resolved_from_this_machine(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, host: Path
) -> None:
    # uv lock resolves every extra: it would build the host's project (running its backend) while packing.
    extras = f'[project.optional-dependencies]\nevil = ["evil @ file://{host}/project"]\ndev = ["devtool"]\n'
    plugin = make_plugin(tmp_path / "src", {"pyproject.toml": PYPROJECT + extras})

    outcome = _pack(capsys, tmp_path, index, plugin)

    assert outcome.code == 0, outcome.err
    notes = json.loads(outcome.out)["results"][0]["notes"]
    assert "removed [project.optional-dependencies] (evil, dev)" in " ".join(notes)
    assert "optional-dependencies" not in tomllib.loads(_shipped(tmp_path)["pyproject.toml"])["project"]
    assert _touched(host) == [], "the host project's backend never ran"


TOOL_UV_LAYOUTS = {
    "split-tables": '{project}[tool.uv.sources]\nevil = {{ path = "{host}/project" }}\n[tool.black]\nx = 1\n'
    '[tool.uv]\nfind-links = ["{host}"]\n[tool.uv.pip]\ntarget = "{host}/t"\n[[tool.uv.index]]\nurl = "file://{host}"\n'
    '[tool.uv.workspace]\nmembers = ["{host}/*"]\n',
    "dotted-keys": '{project}[tool]\nuv.find-links = ["{host}"]\nuv.pip = {{ prefix = "{host}/p" }}\nblack.x = 1\n',
    "inline-table": 'tool = {{ uv = {{ cache-dir = "{host}/c", override-dependencies = ["evil @ file://{host}/project"] }} }}\n'
    "{project}",
}


@pytest.mark.parametrize("layout", TOOL_UV_LAYOUTS.values(), ids=TOOL_UV_LAYOUTS.keys())
def test_tool_uv_settings_naming_this_machine_never_survive_whatever_the_toml_layout(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, host: Path, layout: str
) -> None:
    plugin = make_plugin(tmp_path / "src", {"pyproject.toml": layout.format(project=PYPROJECT, host=host)})

    outcome = _pack(capsys, tmp_path, index, plugin)

    assert outcome.code == 0, outcome.err
    shipped = _shipped(tmp_path)["pyproject.toml"]
    assert str(host) not in shipped
    assert set(tomllib.loads(shipped)["tool"]["uv"]) == {"no-index", "find-links", "environments"}
    assert _touched(host) == []


def test_a_python_version_naming_a_program_is_replaced_and_shown_shortened(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, host: Path
) -> None:
    # A path makes uv run that program; a huge file must not end up whole in the summary.
    plugin = make_plugin(
        tmp_path / "src", {"pyproject.toml": PYPROJECT, ".python-version": f"{host}/python3\n" + "3" * 5_000_000}
    )

    outcome = _pack(capsys, tmp_path, index, plugin)

    assert outcome.code == 0, outcome.err
    assert len(outcome.out) < 20_000
    (note,) = [n for n in json.loads(outcome.out)["results"][0]["notes"] if n.startswith(".python-version said")]
    assert len(note) < 400
    assert _shipped(tmp_path)[".python-version"] == "3.12\n"
    assert _touched(host) == [], "uv lock never ran the program"


def test_requirement_file_locations_are_not_followed_while_packing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, host: Path
) -> None:
    lines = (
        f"-f {host}\n--find-links=file://{host}\n--index-url file://{host}\n--extra-index-url {host}\n"
        "--trusted-host example.invalid\n--config-settings key=value\n--no-build-isolation\n"
    )
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": lines + "dify_plugin==0.7.4\n"})

    outcome = _pack(capsys, tmp_path, index, plugin)

    assert outcome.code == 0, outcome.err
    shipped = _shipped(tmp_path)["requirements.txt"]
    assert str(host) not in shipped and "config-settings" not in shipped
    assert _touched(host) == []


PACK_REFUSALS = {
    "editable-absolute": ("-e {host}/project", "editable requirement"),
    "path-line-outside": ("../../evil-1.0-py3-none-any.whl", "invalid requirement"),
    "file-url-line": ("file://{host}/project", "invalid requirement"),
    "direct-file-url": ("evil @ file://{host}/project", "direct URL requirement"),
    "environment-variable-path": ("evil @ file://${{HOME}}/project", "direct URL requirement"),
}


@pytest.mark.parametrize("line, needle", PACK_REFUSALS.values(), ids=PACK_REFUSALS.keys())
def test_a_requirement_naming_a_place_of_this_machine_is_refused_by_pack(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    index: LocalIndex,
    host: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    needle: str,
) -> None:
    plugin = make_plugin(tmp_path / "src", {"requirements.txt": f"dify_plugin==0.7.4\n{line.format(host=host)}\n"})
    with isolated_tmp(tmp_path / "tmpdir", monkeypatch):
        outcome = _pack(capsys, tmp_path, index, plugin)
    assert_refused(outcome, 4, "requirements.txt:2:", needle)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    assert _touched(host) == []


def test_a_neutralized_plugin_passes_its_own_verification(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, host: Path, python312: Path
) -> None:
    # Everything above at once; pack's built-in replay then checks the package it wrote, settings and all.
    pyproject = TOOL_UV_LAYOUTS["split-tables"].format(project=PYPROJECT, host=host)
    plugin = make_plugin(
        tmp_path / "src",
        {"pyproject.toml": pyproject, "uv.toml": UV_TOMLS["pip-target"].format(host=host), ".python-version": "3.11\n"},
    )
    outcome = run(
        capsys,
        "pack", plugin, "-o", tmp_path / "out", "--cache-dir", tmp_path / "cache", "--index-url", index.url,
        "--uv", own_uv_version(), "--profile", "uv-pip", "--profile", "uv-sync-frozen", "--no-start", "--json",
    )  # fmt: skip
    assert outcome.code == 0, outcome.err
    assert json.loads(outcome.out)["results"][0]["verification"]["ok"] is True
    assert _touched(host) == []


def test_a_replay_keeps_a_cpython_uv_would_fetch_inside_its_work_folder(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex, python312: Path
) -> None:
    # A .python-version (or requires-python) the daemon's venv does not satisfy makes `uv sync` try to download
    # that CPython. The daemon gives uv no HOME, so uv falls back to the user's home from the password database:
    # here a copy naming a fresh folder, mounted over /etc/passwd in a mount namespace of its own.
    plugin = make_plugin(tmp_path / "src", {"pyproject.toml": PYPROJECT.replace(">=3.12", ">=3.8")})
    assert _pack(capsys, tmp_path, index, plugin).code == 0
    (packed,) = (tmp_path / "out").glob("*.difypkg")
    tree = tmp_path / "tree"
    extract_package(packed, tree)
    (tree / ".python-version").write_text("3.8\n")  # not on the PATH the daemon gives uv
    package = write_package(tree, tmp_path / "demo.difypkg").path
    home = tmp_path / "home"
    home.mkdir()
    me = pwd.getpwuid(os.getuid())
    entry = f"{me.pw_name}:x:{me.pw_uid}:{me.pw_gid}:{me.pw_gecos}:{home}:{me.pw_shell}\n"
    passwd = tmp_path / "passwd"
    others = [
        line for line in Path("/etc/passwd").read_text().splitlines(True) if not line.startswith(f"{me.pw_name}:")
    ]
    passwd.write_text(entry + "".join(others))
    argv = [
        Path(sys.executable).with_name("dify-repack"), "verify", package, "--cache-dir", tmp_path / "cache",
        "--uv", own_uv_version(), "--profile", "uv-sync", "--no-start",
    ]  # fmt: skip
    env = {**os.environ, "HOME": str(home), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        ["unshare", "-m", "sh", "-c", 'mount --bind "$0" /etc/passwd && exec "$@"', passwd, *argv],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert done.returncode == 7, done.stderr  # the daemon's install fails there too
    assert "uv-sync" in done.stderr and "FAILED" in done.stdout + done.stderr
    assert sorted(p.name for p in home.rglob("*")) == [], "nothing in the user's folders"


# verify: a package whose settings lead out of it is refused before anything runs.

VERIFY_REFUSALS: dict[str, tuple[dict[str, str], str]] = {
    "uv-pip-target": (
        {"pyproject.toml": PYPROJECT + '[tool.uv.pip]\ntarget = "{host}/target"\n'},
        "pyproject.toml:7: tool.uv.pip.target = ",
    ),
    "uv-pip-python-of-the-host": (
        {"pyproject.toml": PYPROJECT + '[tool.uv.pip]\npython = "3.11"\n'},
        "pyproject.toml:7: tool.uv.pip.python = '3.11' makes `uv pip install` install outside the daemon's venv",
    ),
    "uv-pip-system": (
        {"pyproject.toml": PYPROJECT + "[tool.uv.pip]\nsystem = true\nbreak-system-packages = true\n"},
        "pyproject.toml:7: tool.uv.pip.system = 'true'",
    ),
    "find-links": ({"pyproject.toml": PYPROJECT + '[tool.uv]\nfind-links = ["{host}"]\n'}, "tool.uv.find-links[0]"),
    "index-url-file": ({"pyproject.toml": PYPROJECT + '[tool.uv]\nindex-url = "file://{host}"\n'}, "tool.uv.index-url"),
    "index-table-path": (
        {"pyproject.toml": PYPROJECT + '[[tool.uv.index]]\nname = "h"\nurl = "{host}"\n'},
        "pyproject.toml:8: tool.uv.index[0].url",
    ),
    "source-path-absolute": (
        {"pyproject.toml": PYPROJECT + '[tool.uv.sources]\nevil = {{ path = "{host}/project", editable = true }}\n'},
        "tool.uv.sources.evil.path",
    ),
    "source-path-dotdot": (
        {"pyproject.toml": PYPROJECT + '[tool.uv.sources]\nevil = {{ path = "../../.." }}\n'},
        "tool.uv.sources.evil.path = '../../..'",
    ),
    "source-git-file": (
        {"pyproject.toml": PYPROJECT + '[tool.uv.sources]\nevil = {{ git = "file://{host}/repo" }}\n'},
        "tool.uv.sources.evil.git",
    ),
    "workspace-members": (
        {"pyproject.toml": PYPROJECT + '[tool.uv.workspace]\nmembers = ["../../*"]\n'},
        "tool.uv.workspace.members[0]",
    ),
    "override-file-url": (
        {"pyproject.toml": PYPROJECT + '[tool.uv]\noverride-dependencies = ["evil @ file://{host}/project"]\n'},
        "tool.uv.override-dependencies[0]",
    ),
    "optional-dependency-file-url": (
        {"pyproject.toml": PYPROJECT + '[project.optional-dependencies]\nx = ["evil @ file://{host}/project"]\n'},
        "pyproject.toml:7: project.optional-dependencies.x[0]",
    ),
    "backend-path-outside": (
        {
            "pyproject.toml": PYPROJECT
            + '[build-system]\nrequires = []\nbuild-backend = "b"\nbackend-path = ["{host}"]\n'
        },
        "build-system.backend-path[0]",
    ),
    "uv-toml-find-links": ({"uv.toml": 'find-links = ["{host}"]\n'}, "uv.toml:1: find-links[0]"),
    "uv-toml-pip-prefix": ({"uv.toml": '[pip]\nprefix = "{host}/prefix"\n'}, "uv.toml:2: pip.prefix"),
    "python-version-path": ({".python-version": "{host}/python3\n"}, ".python-version:1: '"),
    "python-version-home": (
        {".python-version": "# pinned\n~/.pyenv/versions/3.12.1/bin/python\n"},
        ".python-version:2:",
    ),
    "lock-registry-outside": (
        {
            "uv.lock": 'version = 1\n[[package]]\nname = "helper"\nversion = "1.0.0"\nsource = {{ registry = "{host}" }}\n'
        },
        "uv.lock:5: package[0].source.registry",
    ),
    "lock-wheel-path-dotdot": (
        {
            "uv.lock": 'version = 1\n[[package]]\nname = "helper"\nversion = "1.0.0"\nsource = {{ registry = "wheels" }}\n'
            'wheels = [{{ path = "../../../host/helper-1.0.0-py3-none-any.whl" }}]\n'
        },
        "uv.lock:6: package[0].wheels[0].path",
    ),
    "requirements-find-links": (
        {"requirements.txt": "--no-index\n-f {host}\ndify_plugin==0.7.4\n"},
        "requirements.txt:2:",
    ),
    "requirements-find-links-abbreviated": (
        {"requirements.txt": "--find={host}\ndify_plugin==0.7.4\n"},
        "requirements.txt:1:",
    ),
    "requirements-index-url-file": (
        {"requirements.txt": "--index-url file://{host}\ndify_plugin==0.7.4\n"},
        "requirements.txt:1:",
    ),
    "requirements-editable": ({"requirements.txt": "-e {host}/project\n"}, "requirements.txt:1:"),
    "requirements-path-line": ({"requirements.txt": "./../../host/project\n"}, "requirements.txt:1:"),
    "requirements-file-url": ({"requirements.txt": "evil @ file://{host}/project\n"}, "requirements.txt:1:"),
    "requirements-environment-variable": (
        {"requirements.txt": "--find-links ${{HOME}}/wheels\ndify_plugin==0.7.4\n"},
        "requirements.txt:1: '${HOME}/wheels' names an environment variable",
    ),
    "requirements-nested-include": (
        {"requirements.txt": "-r more.txt\n", "more.txt": "dify_plugin==0.7.4\n--extra-index-url {host}\n"},
        "more.txt:2:",
    ),
}


@pytest.mark.parametrize("files, needle", VERIFY_REFUSALS.values(), ids=VERIFY_REFUSALS.keys())
def test_verify_refuses_a_setting_leading_out_of_the_package_naming_file_line_and_key(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    host: Path,
    monkeypatch: pytest.MonkeyPatch,
    files: dict[str, str],
    needle: str,
) -> None:
    contents = {"requirements.txt": "--no-index\ndify_plugin==0.7.4\n"}
    contents.update({name: text.format(host=host) for name, text in files.items()})
    package = write_package(make_plugin(tmp_path / "src", contents), tmp_path / "demo.difypkg").path

    with isolated_tmp(tmp_path / "tmpdir", monkeypatch):
        outcome = run(capsys, "verify", package, "--cache-dir", tmp_path / "cache")

    assert_refused(outcome, 4, needle)
    assert "verifying" not in outcome.err, "refused before any replay"
    assert _touched(host) == []


# A TOML key may hold any text, escapes included: the terminal must get it escaped and bounded.
HOSTILE_KEY = "\\u001b[31mred" + "k" * 5_000


def test_a_refusal_shows_a_hostile_setting_name_escaped_and_bounded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pyproject = PYPROJECT + f'[tool.uv.sources."{HOSTILE_KEY}"]\npath = "/etc"\n'
    contents = {"requirements.txt": "--no-index\ndify_plugin==0.7.4\n", "pyproject.toml": pyproject}
    package = write_package(make_plugin(tmp_path / "src", contents), tmp_path / "demo.difypkg").path
    with isolated_tmp(tmp_path / "tmpdir", monkeypatch):
        outcome = run(capsys, "verify", package, "--cache-dir", tmp_path / "cache")
    assert_refused(outcome, 4, "pyproject.toml:7: 'tool.uv.sources.\\x1b[31mred")
    assert "\x1b" not in outcome.err and len(outcome.error_lines[0]) < 500


def test_notes_show_hostile_extra_group_and_key_names_escaped_and_bounded(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, index: LocalIndex
) -> None:
    extras = "".join(f'x{number} = ["helper"]\n' for number in range(5_000))
    pyproject = (
        f'{PYPROJECT}[project.optional-dependencies]\n"{HOSTILE_KEY}" = ["helper"]\n{extras}'
        f'[dependency-groups]\n"{HOSTILE_KEY}" = ["devtool"]\n[tool.uv]\n"{HOSTILE_KEY}" = 1\n'
    )
    outcome = _pack(capsys, tmp_path, index, make_plugin(tmp_path / "src", {"pyproject.toml": pyproject}))
    assert outcome.code == 0, outcome.err
    notes = [note for note in json.loads(outcome.out)["results"][0]["notes"] if "\\x1b[31mred" in note]
    assert [note.split(" (")[0].split(" keys")[0] for note in notes] == [
        "removed [project.optional-dependencies]",
        "removed [dependency-groups]",
        "replaced [tool.uv]",
    ]
    assert all(note.isprintable() and len(note) < 2_000 for note in notes), notes
    assert "… (4991 more)" in notes[0]


def test_settings_inside_the_package_or_remote_are_not_risks(tmp_path: Path) -> None:
    # What pack writes (slim packages name their mirror), and what points inside the package, stays allowed.
    pyproject = PYPROJECT + (
        '[tool.uv]\nno-index = true\nfind-links = ["./wheels/"]\nindex-url = "http://mirror.invalid/simple"\n'
        "environments = [\"sys_platform == 'linux' and python_full_version >= '3.12'\"]\npackage = false\n"
        '[tool.uv.sources]\nlocal = { path = "vendor/local", editable = true }\nremote = { git = "https://h/r" }\n'
        'wheel = { path = "${PROJECT_ROOT}/wheels/w-1-py3-none-any.whl" }\n'
        '[build-system]\nrequires = ["evil @ file:///etc"]\nbuild-backend = "b"\nbackend-path = ["/etc"]\n'
    )
    lock = 'version = 1\n[[package]]\nname = "helper"\nversion = "1.0.0"\nsource = { registry = "wheels" }\n'
    lock += 'wheels = [{ path = "helper-1.0.0-py3-none-any.whl" }]\n'
    requirements = (
        "--no-index\n--find-links=./wheels/\n-f file:./wheels\n--extra-index-url https://mirror.invalid/simple\n"
        "-e .\nhelper @ file:///${PROJECT_ROOT}/wheels/helper-1.0.0-py3-none-any.whl\ndify_plugin==0.7.4\n"
    )
    root = make_plugin(
        tmp_path / "plugin",
        {"pyproject.toml": pyproject, "uv.lock": lock, ".python-version": "3.12\n", "requirements.txt": requirements},
    )
    # [build-system] is never read with `package = false`: uv does not build the project.
    assert config_risks(root) == []
    check_replay_config(root)


def test_a_compatible_release_bound_is_a_version_not_a_home_folder(tmp_path: Path) -> None:
    # `~` names a home folder only as `~`, `~/...` or `~user/...`; `~=` is PEP 440's compatible-release operator.
    pyproject = PYPROJECT + '[tool.uv]\nrequired-version = "~=0.9"\n'
    root = make_plugin(tmp_path / "plugin", {"pyproject.toml": pyproject, "requirements.txt": "dify_plugin~=0.7.4\n"})
    assert config_risks(root) == []
    check_replay_config(root)
    (root / "uv.toml").write_text('cache-dir = "~/.cache/uv"\n')
    assert [risk.setting for risk in config_risks(root)] == ["cache-dir"]


def test_inspect_lists_the_settings_verify_refuses(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, host: Path
) -> None:
    root = make_plugin(
        tmp_path / "src",
        {"requirements.txt": f"-f {host}\ndify_plugin==0.7.4\n", "uv.toml": f'[pip]\ntarget = "{host}/t"\n'},
    )
    package = write_package(root, tmp_path / "demo.difypkg").path
    outcome = run(capsys, "inspect", "--json", package)
    assert outcome.code == 0, outcome.err
    problems = json.loads(outcome.out)["problems"]
    assert any(p.startswith("requirements.txt:1: ") and "is outside the package" in p for p in problems)
    assert any(problem.startswith("uv.toml:2: pip.target = ") for problem in problems)

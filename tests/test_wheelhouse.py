"""Wheelhouse mode, hermetically: ``pack --wheelhouse`` grows one static index for many plugins (each file once),
``wheelhouse check|prune`` look after it, and ``pack --mirror-url`` writes slim packages that name only the mirror
and install from it on every daemon profile, with the wheelhouse served inside the network namespace.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import zipfile
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin, make_wheel, manifest_yaml
from dify_repack.cli import main
from dify_repack.errors import DifyRepackError, EnvironmentProblem, Interrupted, NetworkError, VerificationError
from dify_repack.inspect import inspect_package
from dify_repack.mirror import MIRROR_HEADER, missing_from_wheelhouse, slim_mirror_url, take_lock_urls_from_mirror
from dify_repack.packing import PackOptions, PackResult, pack
from dify_repack.requirements import tomllib
from dify_repack.resolve import Indexes
from dify_repack.runner import run
from dify_repack.uvbin import uv_bin
from dify_repack.verify import PROFILES, VerifyOptions, verify_package
from dify_repack.wheelhouse import (
    Incoming,
    Wheelhouse,
    add_wheels,
    check_wheelhouse,
    prune,
    read_wheelhouse,
    record_plugin,
)
from fakeweb import Reply, serve

MIRROR = "http://pypi.internal:8080/simple"
FIRST = {"requirements.txt": "dify_plugin==0.7.4\nfastmath\n"}
SECOND = {"requirements.txt": "dify_plugin==0.7.4\nmultiplatform\n"}
# With a [build-system]: the slim [tool.uv] must keep package = false next to the mirror.
PYPROJECT = """\
[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"

[project]
name = "first"
version = "0.1.0"
dependencies = ["dify_plugin==0.7.4", "fastmath"]
"""


def _pack(index: LocalIndex, tmp_path: Path, name: str, files: dict[str, str], **options: object) -> PackResult:
    plugin = make_plugin(tmp_path / f"src-{name}", {"manifest.yaml": manifest_yaml(name=name), **files})
    return pack(
        plugin,
        PackOptions(
            output_dir=tmp_path / "out",
            indexes=Indexes(index.url),
            cache_dir=tmp_path / "cache",
            **options,  # type: ignore[arg-type]
        ),
    )


def test_two_plugins_grow_one_index_holding_each_shared_wheel_once(tmp_path: Path, index: LocalIndex) -> None:
    house = tmp_path / "house"
    _pack(index, tmp_path, "first", FIRST, wheelhouse=house)
    _pack(index, tmp_path, "second", SECOND, wheelhouse=house)
    manifest = read_wheelhouse(house)
    assert set(manifest.plugins) == {"tester/first:0.1.0", "tester/second:0.1.0"}
    shared = set(manifest.plugins["tester/first:0.1.0"]) & set(manifest.plugins["tester/second:0.1.0"])
    assert {"dify_plugin-0.7.4-py3-none-any.whl", "helper-1.1.0-py3-none-any.whl"} <= shared
    files = sorted(path.name for path in (house / "files").iterdir())
    assert files == sorted(manifest.files) and len(files) == len(set(files))
    page = (house / "simple" / "dify-plugin" / "index.html").read_text()
    digest = manifest.files["dify_plugin-0.7.4-py3-none-any.whl"].sha256
    assert f'href="../../files/dify_plugin-0.7.4-py3-none-any.whl#sha256={digest}"' in page
    assert '<a href="dify-plugin/">' in (house / "simple" / "index.html").read_text()
    assert check_wheelhouse(house) == []
    # The full packages are unchanged by --wheelhouse: they still carry their wheels.
    with zipfile.ZipFile(tmp_path / "out" / "tester-first_0.1.0-offline.difypkg") as archive:
        assert any(name.startswith("wheels/") for name in archive.namelist())


def test_a_full_package_that_fails_verification_leaves_the_wheelhouse_as_it_was(
    tmp_path: Path, index: LocalIndex
) -> None:
    house = tmp_path / "house"
    _pack(index, tmp_path, "first", FIRST, wheelhouse=house)
    before = read_wheelhouse(house)

    def failing(*_: object) -> None:
        raise VerificationError("would not install offline")

    with pytest.raises(VerificationError):
        _pack(index, tmp_path, "second", SECOND, wheelhouse=house, check=failing)
    after = read_wheelhouse(house)
    assert (after.plugins, after.files) == (before.plugins, before.files)
    assert not (tmp_path / "out" / "tester-second_0.1.0-offline.difypkg").exists()


@pytest.mark.parametrize(
    "failure", [VerificationError("would not install offline"), Interrupted(signal.SIGINT)], ids=["fails", "ctrl-c"]
)
def test_a_slim_package_is_listed_in_the_wheelhouse_only_once_accepted(
    tmp_path: Path, index: LocalIndex, failure: DifyRepackError
) -> None:
    """Its verification needs its files served, so they go in first; the plugin is listed only after it passed."""
    house = tmp_path / "house"
    _pack(index, tmp_path, "first", FIRST, wheelhouse=house)
    before = read_wheelhouse(house)
    seen = []

    def failing(*_: object) -> None:
        seen.append(read_wheelhouse(house))
        raise failure

    with pytest.raises(type(failure)):
        _pack(index, tmp_path, "second", SECOND, wheelhouse=house, mirror_url=MIRROR, check=failing)
    (during,) = seen
    assert "tester/second:0.1.0" not in during.plugins
    assert "multiplatform-1.0.0-py3-none-any.whl" in during.files  # what the verification installs from
    after = read_wheelhouse(house)
    assert after.plugins == before.plugins
    assert set(after.files) - after.needed() == {"multiplatform-1.0.0-py3-none-any.whl"}  # no plugin needs it
    assert check_wheelhouse(house) == []
    assert not (tmp_path / "out" / "tester-second_0.1.0-offline.difypkg").exists()
    # Accepted, the same plugin is listed with exactly the files its package pins.
    slim = _pack(index, tmp_path, "second", SECOND, wheelhouse=house, mirror_url=MIRROR)
    with zipfile.ZipFile(slim.output) as archive:
        pinned = set(re.findall(r"sha256:([0-9a-f]{64})", archive.read("requirements.txt").decode()))
    accepted = read_wheelhouse(house)
    listed = accepted.plugins["tester/second:0.1.0"]
    assert {accepted.files[name].sha256 for name in listed} == pinned


def test_a_slim_package_whose_plugin_does_not_start_is_not_listed(
    tmp_path: Path, index: LocalIndex, python312: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    house = tmp_path / "house"
    broken = make_plugin(tmp_path / "broken", {**FIRST, "main.py": "raise SystemExit('no heartbeat today')\n"})
    own = run([uv_bin(), "--version"]).stdout.split()[1]
    args = ["-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(tmp_path / "cache")]
    args += ["--wheelhouse", str(house), "--mirror-url", MIRROR, "--profile", "uv-pip", "--uv", own, "--json"]
    assert main(["pack", str(broken), *args]) == 7
    assert "exited before its first heartbeat" in capsys.readouterr().out
    assert read_wheelhouse(house).plugins == {}
    assert not (tmp_path / "out" / "tester-demo_0.1.0-offline.difypkg").exists()


def test_recording_a_plugin_whose_files_were_pruned_meanwhile_fails(tmp_path: Path) -> None:
    house = tmp_path / "house"
    add_wheels(house, "a/other:1.0.0", [Incoming(make_wheel(tmp_path / "wheels", "other", "1.0.0"))])
    staged = add_wheels(house, None, [Incoming(make_wheel(tmp_path / "wheels", "helper", "1.0.0"))])
    assert prune(house, ["a/other"]).removed == ("helper-1.0.0-py3-none-any.whl", "other-1.0.0-py3-none-any.whl")
    with pytest.raises(VerificationError, match=re.escape("helper-1.0.0-py3-none-any.whl left the wheelhouse")):
        record_plugin(house, "a/one:1.0.0", staged.files)
    assert read_wheelhouse(house).plugins == {}


def test_a_run_adds_only_what_is_new_and_pages_carry_requires_python(tmp_path: Path) -> None:
    wheels = tmp_path / "wheels"
    old = make_wheel(wheels, "helper", "1.0.0", requires_python=">=3.8")
    new = make_wheel(wheels, "other", "2.0.0")
    house = tmp_path / "house"
    first = add_wheels(house, "a/one:1.0.0", [Incoming(old)])
    page = (house / "simple" / "helper" / "index.html").read_text()
    stamp = (house / "simple" / "helper" / "index.html").stat().st_mtime_ns
    second = add_wheels(house, "a/two:1.0.0", [Incoming(old), Incoming(new)])
    assert first.added == (old.name,)
    assert (second.added, second.reused) == ((new.name,), (old.name,))
    assert 'data-requires-python="&gt;=3.8"' in page
    assert (house / "simple" / "helper" / "index.html").stat().st_mtime_ns == stamp  # unchanged page not rewritten
    assert not list(house.rglob("*.part"))
    # A downloaded file never changes under its name; a rebuilt sdist wheel keeps the copy already served.
    changed = tmp_path / "changed"
    changed.mkdir()
    shutil.copy(old, changed / old.name)
    with (changed / old.name).open("ab") as handle:
        handle.write(b"\0")
    with pytest.raises(Exception, match="already in the wheelhouse with other content"):
        add_wheels(house, "a/three:1.0.0", [Incoming(changed / old.name)])
    kept = add_wheels(house, "a/three:1.0.0", [Incoming(changed / old.name, built=True)])
    assert kept.files[0].sha256 == first.files[0].sha256


def test_a_wheelhouse_that_cannot_be_written_is_the_hosts_problem(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "wheels", "helper", "1.0.0")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(EnvironmentProblem, match="cannot write there") as raised:
        add_wheels(blocker / "house", "a/one:1.0.0", [Incoming(wheel)])
    assert raised.value.exit_code == 9 and "--wheelhouse DIR" in str(raised.value.tip)
    house = tmp_path / "house"
    add_wheels(house, "a/two:1.0.0", [Incoming(make_wheel(tmp_path / "wheels", "other", "1.0.0"))])
    (house / "files" / wheel.name).mkdir()  # a folder where the wheel goes: the rename into place fails
    with pytest.raises(EnvironmentProblem):
        add_wheels(house, "a/one:1.0.0", [Incoming(wheel)])


def test_check_names_a_tampered_file(tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str]) -> None:
    house = tmp_path / "house"
    _pack(index, tmp_path, "first", FIRST, wheelhouse=house)
    assert main(["wheelhouse", "check", str(house)]) == 0
    target = house / "files" / "helper-1.1.0-py3-none-any.whl"
    target.write_bytes(target.read_bytes() + b"tampered")
    capsys.readouterr()
    assert main(["wheelhouse", "check", str(house)]) == 7
    out = capsys.readouterr().out
    assert "files/helper-1.1.0-py3-none-any.whl: sha256" in out
    assert main(["wheelhouse", "check", str(house), "--json"]) == 7
    document = json.loads(capsys.readouterr().out)
    assert (document["command"], document["status"], len(document["problems"])) == ("wheelhouse check", "error", 1)
    assert document["error"]["exit_code"] == 7


def test_prune_drops_the_files_no_remaining_plugin_needs(
    tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    house = tmp_path / "house"
    _pack(index, tmp_path, "first", FIRST, wheelhouse=house)
    _pack(index, tmp_path, "second", SECOND, wheelhouse=house)
    before = read_wheelhouse(house)
    # One plugin it does not hold fails the whole command: the known one is not forgotten either.
    assert main(["wheelhouse", "prune", str(house), "--plugin", "tester/first", "--plugin", "tester/nobody"]) == 2
    assert read_wheelhouse(house) == before
    assert main(["wheelhouse", "prune", str(house), "--plugin", "tester/first", "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["plugins"] == ["tester/first:0.1.0"]
    assert document["removed"] == ["fastmath-2.0.0-cp312-cp312-manylinux_2_28_x86_64.whl"]
    assert not (house / "simple" / "fastmath").exists()
    assert (house / "files" / "dify_plugin-0.7.4-py3-none-any.whl").is_file()
    assert check_wheelhouse(house) == []
    assert list(read_wheelhouse(house).plugins) == ["tester/second:0.1.0"]


@pytest.fixture
def slim(tmp_path: Path, index: LocalIndex) -> PackResult:
    files = {**FIRST, "pyproject.toml": PYPROJECT}
    return _pack(index, tmp_path, "first", files, wheelhouse=tmp_path / "house", mirror_url=MIRROR)


def test_slim_package_names_only_the_mirror(slim: PackResult, tmp_path: Path) -> None:
    with zipfile.ZipFile(slim.output) as archive:
        names = archive.namelist()
        requirements = archive.read("requirements.txt").decode()
        pyproject = tomllib.loads(archive.read("pyproject.toml").decode())
        lock_text = archive.read("uv.lock").decode()
    assert not any(name.startswith("wheels/") for name in names)
    house = read_wheelhouse(tmp_path / "house")
    lines = requirements.splitlines()
    assert f"--index-url {MIRROR}" in lines and "--trusted-host pypi.internal" in lines
    assert "--no-index" not in requirements and "find-links" not in requirements
    assert "dify_plugin==0.7.4 \\" in lines  # the plain pin the daemon's SDK patch looks for
    # Every file any target may install is pinned, and only files the wheelhouse serves.
    assert set(re.findall(r"--hash=sha256:([0-9a-f]{64})", requirements)) == {f.sha256 for f in house.files.values()}
    assert pyproject["tool"]["uv"]["index-url"] == MIRROR
    assert set(pyproject["tool"]["uv"]) == {"index-url", "environments", "package"}
    lock = tomllib.loads(lock_text)
    urls = [wheel["url"] for package in lock["package"] for wheel in package.get("wheels", [])]
    registries = {package["source"].get("registry") for package in lock["package"]} - {None}
    assert urls and all(url.startswith("http://pypi.internal:8080/files/") for url in urls)
    assert registries == {MIRROR}
    assert "127.0.0.1" not in lock_text
    assert any(MIRROR in line for line in slim.dify_settings)
    assert slim.stats.compressed_bytes < 10_000
    inspection = inspect_package(slim.output)
    assert all(verdict.ok for verdict in inspection.verdicts), inspection.to_json()
    assert any(MIRROR in problem and "--wheelhouse" in problem for problem in inspection.problems)


def test_slim_package_installs_from_the_served_wheelhouse_on_every_profile(
    slim: PackResult, tmp_path: Path, python312: Path
) -> None:
    # Only the mirror profile passes the mirror on the command line: the other four are daemons without
    # PIP_MIRROR_URL, which find the mirror through the package alone.
    own = run([uv_bin(), "--version"]).stdout.split()[1]
    options = VerifyOptions(
        uv_versions=[own], arches=["amd64"], cache_dir=tmp_path / "cache", wheelhouse=slim.wheelhouse
    )
    report = verify_package(slim.output, options)
    assert report.ok, json.dumps(report.to_json(), indent=1)
    assert {check.profile for check in report.checks if check.mode == "live"} == set(PROFILES)
    mirror = next(check for check in report.checks if check.profile == "mirror")
    assert f"-i {MIRROR}" in mirror.command
    assert "mirror" in report.isolation


def test_a_wheelhouse_lacking_a_file_fails_verification_naming_it(
    slim: PackResult, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert slim.wheelhouse is not None
    (slim.wheelhouse / "files" / "helper-1.1.0-py3-none-any.whl").unlink()
    own = run([uv_bin(), "--version"]).stdout.split()[1]
    args = ["--profile", "uv-pip", "--no-start", "--cache-dir", str(tmp_path / "cache"), "--uv", own]
    code = main(["verify", str(slim.output), "--wheelhouse", str(slim.wheelhouse), *args])
    assert code == 7
    out = capsys.readouterr().out
    assert "lacks helper-1.1.0-py3-none-any.whl" in out


def test_verify_of_a_slim_package_asks_for_its_wheelhouse(slim: PackResult, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(slim.output)]) == 2
    assert "--wheelhouse" in capsys.readouterr().err


def test_cli_mirror_url_defaults_the_wheelhouse_beside_the_output(
    tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "src", FIRST)
    out = tmp_path / "out"
    args = ["pack", str(plugin), "-o", str(out), "--index-url", index.url, "--cache-dir", str(tmp_path / "cache")]
    assert main([*args, "--mirror-url", "http://user:secret@pypi.internal/simple"]) == 2
    assert "secret" not in capsys.readouterr().err
    assert main([*args, "--lock-from-mirror"]) == 2
    assert "--lock-from-mirror needs --mirror-url" in capsys.readouterr().err
    assert main([*args, "--wheelhouse", str(plugin)]) == 2  # a plugin folder is no wheelhouse
    assert "holds no wheelhouse" in capsys.readouterr().err
    assert main([*args, "--mirror-url", MIRROR, "--no-verify"]) == 0
    printed = capsys.readouterr().out
    assert f"PIP_MIRROR_URL={MIRROR}" in printed and "location /wheelhouse/ { alias /srv/wheelhouse/; }" in printed
    assert "python3 -m http.server 8080 --directory" in printed
    assert read_wheelhouse(out / "wheelhouse").plugins
    package = out / "tester-demo_0.1.0-offline.difypkg"
    probe = tmp_path / "probe"
    probe.mkdir()
    with zipfile.ZipFile(package) as archive:
        (probe / "requirements.txt").write_bytes(archive.read("requirements.txt"))
    assert slim_mirror_url(probe) == MIRROR
    # Without pyproject.toml there is no uv.lock to name files: the wheelhouse's own record does.
    (out / "wheelhouse" / "files" / "helper-1.1.0-py3-none-any.whl").unlink()
    own = run([uv_bin(), "--version"]).stdout.split()[1]
    verify_args = ["--wheelhouse", str(out / "wheelhouse"), "--profile", "uv-pip", "--uv", own, "--no-start"]
    assert main(["verify", str(package), *verify_args, "--cache-dir", str(tmp_path / "cache")]) == 7
    assert "lacks helper-1.1.0-py3-none-any.whl" in capsys.readouterr().out


def test_pack_mirror_url_verifies_against_the_served_wheelhouse_by_default(
    tmp_path: Path, index: LocalIndex, capsys: pytest.CaptureFixture[str], python312: Path
) -> None:
    plugin = make_plugin(tmp_path / "src", FIRST)
    own = run([uv_bin(), "--version"]).stdout.split()[1]
    args = ["-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(tmp_path / "cache")]
    assert main(["pack", str(plugin), *args, "--mirror-url", MIRROR, "--uv", own, "--no-start", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)["results"][0]
    assert result["verification"]["ok"] and "mirror" in result["verification"]["isolation"]
    assert (result["mirror_url"], result["wheelhouse"]) == (MIRROR, str(tmp_path / "out" / "wheelhouse"))
    assert result["verification"]["checks"] == 1 + len(PROFILES)  # the wheelhouse's files, then each profile


def test_upload_credentials_come_from_the_url_then_netrc_then_twine_variables(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dify_repack.wheelhouse import _credentials

    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("TWINE_USERNAME", "env-user")
    monkeypatch.setenv("TWINE_PASSWORD", "env-secret")
    assert _credentials("https://u%40corp:p%3Aw@nexus.internal/repo/") == (
        "https://nexus.internal/repo/",
        "u@corp",
        "p:w",
    )
    assert _credentials("https://nexus.internal/repo/") == ("https://nexus.internal/repo/", "env-user", "env-secret")
    (tmp_path / ".netrc").write_text("machine nexus.internal login netrc-user password netrc-secret\n")
    (tmp_path / ".netrc").chmod(0o600)
    assert _credentials("https://nexus.internal/repo/")[1:] == ("netrc-user", "netrc-secret")


def test_a_refused_upload_is_a_network_error_that_never_prints_the_password(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from fakeweb import serve

    house = tmp_path / "house"
    add_wheels(house, "a/one:1.0.0", [Incoming(make_wheel(tmp_path / "wheels", "helper", "1.0.0"))])
    with serve() as web:  # answers no upload: every POST fails
        url = web.url.replace("http://", "http://uploader:s3cret-pass@") + "/repo/"
        code = main(["wheelhouse", "upload", str(house), "--repository-url", url, "--json"])
    printed = capsys.readouterr()
    assert code == 6
    assert "s3cret-pass" not in printed.out + printed.err
    document = json.loads(printed.out)
    assert document["command"] == "wheelhouse upload" and "uploader:****@" in document["error"]["message"]


def test_a_batch_packed_side_by_side_grows_one_wheelhouse(tmp_path: Path, index: LocalIndex) -> None:
    sources = [
        make_plugin(tmp_path / name, {"manifest.yaml": manifest_yaml(name=name), **files})
        for name, files in (("first", FIRST), ("second", SECOND))
    ]
    house = tmp_path / "house"
    args = ["-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(tmp_path / "cache")]
    assert main(["pack", *map(str, sources), *args, "-j", "2", "--wheelhouse", str(house), "--no-verify", "-q"]) == 0
    assert set(read_wheelhouse(house).plugins) == {"tester/first:0.1.0", "tester/second:0.1.0"}
    assert check_wheelhouse(house) == []


def test_lock_urls_from_the_mirror_take_only_links_that_fit_in_the_lock(tmp_path: Path) -> None:
    digest = "ab" * 32
    lock = f'[[package]]\nname = "helper"\nsource = {{ registry = "{MIRROR}" }}\nwheels = [\n'
    lock += (
        f'  {{ url = "http://pypi.internal:8080/files/helper-1.0.0-py3-none-any.whl", hash = "sha256:{digest}" }},\n]\n'
    )
    (tmp_path / "uv.lock").write_text(lock)
    with serve() as web:
        # A link that would end the TOML string and add a key of its own counts as not served.
        evil = '/x" , evil = "1/helper-1.0.0-py3-none-any.whl'
        web.route("/simple/helper/", Reply(body=f"<a href='{evil}#sha256={digest}'>x</a>".encode()))
        with pytest.raises(NetworkError, match=r"does not serve helper-1\.0\.0-py3-none-any\.whl"):
            take_lock_urls_from_mirror(tmp_path, web.url + "/simple")
        good = "/packages/helper-1.0.0-py3-none-any.whl"
        web.route("/simple/helper/", Reply(body=f'<a href="{good}#sha256={digest}">x</a>'.encode()))
        take_lock_urls_from_mirror(tmp_path, web.url + "/simple")
    assert tomllib.loads((tmp_path / "uv.lock").read_text())["package"][0]["wheels"][0]["url"] == web.url + good


@pytest.mark.parametrize(
    "command",
    [["list"], ["check"], ["prune", "--plugin", "a/b"], ["upload", "--repository-url", "http://127.0.0.1:9/x/"]],
)
def test_every_wheelhouse_command_needs_a_wheelhouse(
    command: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["wheelhouse", command[0], str(tmp_path), *command[1:]]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"error: {tmp_path}: no wheelhouse here (wheelhouse.json is missing)",
        "tip: pack with --wheelhouse DIR",
    ]


def test_files_a_slim_package_pins_are_named_bounded_and_escaped(tmp_path: Path) -> None:
    first, second = "a" * 64, "b" * 64
    long_name = "x" * 5000 + "\x1b[2J.whl"
    (tmp_path / "requirements.txt").write_text(
        f"{MIRROR_HEADER}\n--index-url {MIRROR}\nhelper\x1b[2J{'y' * 5000}==1.0 \\\n    --hash=sha256:{first}\n"
        f"other==1.0 \\\n    --hash=sha256:{second}\n"
    )
    lock = f'[[package]]\nname = "other"\nwheels = [{{ url = "http://h/{long_name}", hash = "sha256:{second}" }}]\n'
    (tmp_path / "uv.lock").write_text(lock.replace("\x1b", "\\u001b"))
    missing = missing_from_wheelhouse(tmp_path, Wheelhouse(tmp_path / "house", {}, {}))
    assert len(missing) == 2
    assert all("\x1b" not in name and len(name) < 400 for name in missing), missing

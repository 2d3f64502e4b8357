"""The command line's contract: options on either side of the command, one JSON envelope for every outcome,
one exit code per problem, and usage errors found before any work starts."""

from __future__ import annotations

import json
import logging
import platform
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import dify_repack
from builders import LocalIndex, make_plugin
from dify_repack.cli import main
from dify_repack.errors import ExitCode
from dify_repack.package import write_package
from dify_repack.signing import generate_keypair
from dify_repack.targets import canonical_arch, chosen_arches, make_targets
from dify_repack.verify import Check, Step, VerifyReport
from fakeweb import FakeWeb, Reply, serve

BITS = 2048  # fast enough for tests


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def document(out: str) -> dict[str, object]:
    """stdout must hold exactly one JSON document and nothing else."""
    payload = json.loads(out)
    assert isinstance(payload, dict)
    return payload


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = make_plugin(tmp_path / "src", {"requirements.txt": "dify_plugin==0.7.4\n"})
    return write_package(root, tmp_path / "demo.difypkg").path


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, Path]:
    return generate_keypair(tmp_path / "keys" / "test", bits=BITS)


@pytest.fixture
def web(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeWeb]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"):  # the fake Marketplace is on 127.0.0.1
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)
    with serve() as server:
        yield server


# The envelope of every command: success and error, pinned (PLAN contract 4).


def _error_cases(tmp_path: Path, package: Path, keys: tuple[Path, Path]) -> dict[str, tuple[list[str], int]]:
    missing = str(tmp_path / "missing.difypkg")
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("")
    return {
        "pack": (["pack", missing], ExitCode.USAGE),
        "verify": (["verify", missing], ExitCode.USAGE),
        "inspect": (["inspect", missing], ExitCode.USAGE),
        "keygen": (["keygen", str(keys[0]).removesuffix(".private.pem")], ExitCode.USAGE),  # never overwrites
        "sign": (["sign", str(package), "--key", str(keys[1])], ExitCode.SIGNATURE),  # a public key cannot sign
        "verify-signature": (["verify-signature", str(package), "--key", str(keys[1])], ExitCode.SIGNATURE),
        "cache info": (["cache", "info", "--cache-dir", str(not_a_dir)], ExitCode.USAGE),
        "cache clean": (["cache", "clean", "--cache-dir", str(not_a_dir)], ExitCode.USAGE),
    }


@pytest.mark.parametrize(
    "command", ["pack", "verify", "inspect", "keygen", "sign", "verify-signature", "cache info", "cache clean"]
)
@pytest.mark.parametrize("place", ["before", "after"])
def test_every_error_is_one_json_document_with_the_envelope(
    command: str,
    place: str,
    tmp_path: Path,
    package: Path,
    keys: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv, exit_code = _error_cases(tmp_path, package, keys)[command]
    code, out, err = run(["--json", *argv] if place == "before" else [*argv, "--json"], capsys)
    payload = document(out)
    assert code == exit_code
    assert set(payload) == {"schema", "command", "status", "error"}
    assert (payload["schema"], payload["command"], payload["status"]) == (1, command, "error")
    error = payload["error"]
    assert isinstance(error, dict) and set(error) == {"message", "tip", "exit_code"}
    assert error["exit_code"] == exit_code and error["message"]
    assert err.startswith("error: "), "people reading stderr still get the one-line error"


def test_success_envelopes(
    tmp_path: Path, package: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    def success(argv: list[str], command: str) -> dict[str, object]:
        code, out, _ = run(argv, capsys)
        payload = document(out)
        assert code == 0 and "error" not in payload
        assert (payload["schema"], payload["command"], payload["status"]) == (1, command, "success")
        return payload

    assert success(["inspect", str(package), "--json"], "inspect")["identifier"]
    created = success(["keygen", str(tmp_path / "new"), "--bits", str(BITS), "--json"], "keygen")
    assert created["public_key"] == str(tmp_path / "new.public.pem") and "plugin_daemon" in str(created["trust"])
    signed = tmp_path / "signed.difypkg"
    payload = success(["sign", str(package), "--key", str(keys[0]), "-o", str(signed), "--json"], "sign")
    assert payload["package"] == str(signed) and payload["category"] == "community"
    payload = success(["verify-signature", str(signed), "--key", str(keys[1]), "--json"], "verify-signature")
    assert payload["category"] == "community"
    cache = tmp_path / "cache"
    assert success(["cache", "info", "--cache-dir", str(cache), "--json"], "cache info")["files"] == 0
    assert success(["--json", "cache", "clean", "--cache-dir", str(cache)], "cache clean")["emptied"] is True


@pytest.mark.parametrize("argv", [["--version", "--json"], ["--json", "--version"], ["--version", "-q", "--json"]])
def test_version_with_json_is_one_envelope_document(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(argv, capsys)
    payload = document(out)
    assert code == 0 and err == ""
    assert payload == {
        "schema": 1,
        "command": "version",
        "status": "success",
        "version": dify_repack.__version__,
        "python": platform.python_version(),
    }


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--version"], f"dify-repack, version {dify_repack.__version__}\n"),
        (["-q", "--version"], f"{dify_repack.__version__}\n"),  # for scripts: the number alone
        (["--version", "--quiet"], f"{dify_repack.__version__}\n"),
    ],
)
def test_version_plain_and_quiet(argv: list[str], shown: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(argv, capsys) == (0, shown, "")


def _report(package: Path, ok: bool) -> VerifyReport:
    install = Step("install", ok, 1.0, "" if ok else "No solution found\nhelper was not found")
    check = Check("uv-pip", "0.11.7", "cp312-linux-amd64", "live", "uv pip install -r requirements.txt", (install,))
    return VerifyReport(package, "tester/demo:0.1.0@abc", "unshare -n", (check,))


@pytest.mark.parametrize("ok", [True, False])
def test_verify_envelope(
    ok: bool, package: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("dify_repack.cli.verify.verify_package", lambda path, *_: _report(path, ok))
    code, out, _ = run(["verify", str(package), "--json"], capsys)
    payload = document(out)
    assert (payload["schema"], payload["command"], payload["status"]) == (1, "verify", "success" if ok else "error")
    assert payload["identifier"] == "tester/demo:0.1.0@abc" and len(payload["checks"]) == 1  # type: ignore[arg-type]
    if ok:
        assert code == 0 and "error" not in payload
    else:
        assert code == ExitCode.VERIFY
        assert payload["error"]["exit_code"] == 7  # type: ignore[index]
        assert "uv-pip (0.11.7, cp312-linux-amd64) failed at install" in payload["error"]["message"]  # type: ignore[index]


def test_verify_quiet_prints_one_line_or_the_error(
    package: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("dify_repack.cli.verify.verify_package", lambda path, *_: _report(path, True))
    code, out, err = run(["verify", str(package), "-q"], capsys)
    assert code == 0 and out.splitlines() == [
        "verified: tester/demo:0.1.0@abc: 1 live replay passed (network cut by unshare -n)"
    ]
    monkeypatch.setattr("dify_repack.cli.verify.verify_package", lambda path, *_: _report(path, False))
    code, out, err = run(["-q", "verify", str(package)], capsys)
    assert code == ExitCode.VERIFY and out == ""
    assert err.startswith("error: uv-pip (0.11.7, cp312-linux-amd64) failed at install")


def test_pack_envelope(tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    argv = ["pack", str(plugin), "-o", str(tmp_path / "out"), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    code, out, err = run([*argv, "--no-verify", "--json", "-q"], capsys)
    payload = document(out)
    assert code == 0 and err == ""
    assert (payload["schema"], payload["command"], payload["status"]) == (1, "pack", "success")
    assert [result["status"] for result in payload["results"]] == ["success"]  # type: ignore[attr-defined]


def test_paths_that_look_like_markup_are_printed_as_typed(
    tmp_path: Path, index: LocalIndex, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    out_dir = tmp_path / "out[/b]"
    argv = ["pack", str(plugin), "-o", str(out_dir), "--index-url", index.url, "--cache-dir", str(cache_dir)]
    code, out, _ = run([*argv, "--no-verify"], capsys)
    assert code == 0 and f"wrote {out_dir}" in " ".join(out.split())


# Options on either side of the command.


@pytest.mark.parametrize("flag", ["-q", "-v", "--json"])
@pytest.mark.parametrize(
    "argv",
    [
        ["pack", "--help"],
        ["verify", "--help"],
        ["inspect", "--help"],
        ["keygen", "--help"],
        ["sign", "--help"],
        ["verify-signature", "--help"],
        ["cache", "info", "--help"],
        ["cache", "clean", "--help"],
    ],
)
def test_output_options_are_accepted_after_every_command(
    flag: str, argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run([*argv[:-1], flag, "--help"], capsys)
    assert code == 0 and "-q, --quiet" in out and "--json" in out and "-v, --verbose" in out
    assert "Example" in out, "every command's help ends with examples"


def test_quiet_after_the_command_keeps_stderr_clean(
    package: Path, keys: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(["inspect", str(package), "-q"], capsys)
    assert code == 0 and err == "" and len(out.splitlines()) == 1
    assert out.startswith("tester/demo:0.1.0@") and ": unsigned; pip FAIL, uv-pip FAIL," in out  # no wheels shipped
    code, out, _ = run(["keygen", str(tmp_path / "q"), "--bits", str(BITS), "-q"], capsys)
    assert code == 0 and len(out.splitlines()) == 2, "only the two key paths"


@pytest.mark.parametrize("argv", [["-v", "cache", "info"], ["cache", "info", "-v"], ["cache", "-v", "info"]])
def test_verbose_counts_wherever_it_is_given(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = logging.getLogger()
    level = root.level
    try:
        assert run([*argv, "--cache-dir", str(tmp_path)], capsys)[0] == 0
        assert root.level == logging.DEBUG
    finally:
        root.setLevel(level)


def test_the_group_help_lists_the_common_flows(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0 and "Common flows" in out and "--sign-key" in out and "-r plugins.txt" in out


# One exit code per problem: a missing input file is a usage error (2) for every command.


@pytest.mark.parametrize(
    "argv",
    [
        ["pack", "{missing}"],
        ["pack", "-r", "{missing}"],
        ["pack", "{package}", "--sign-key", "{missing}"],
        ["verify", "{missing}"],
        ["inspect", "{missing}"],
        ["inspect", "{package}", "--key", "{missing}"],
        ["sign", "{missing}", "--key", "{private}"],
        ["sign", "{package}", "--key", "{missing}"],
        ["verify-signature", "{missing}", "--key", "{public}"],
        ["verify-signature", "{package}", "--key", "{missing}"],
    ],
)
def test_a_missing_input_file_is_exit_2_everywhere(
    argv: list[str], tmp_path: Path, package: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    names = {"missing": tmp_path / "missing.difypkg", "package": package, "private": keys[0], "public": keys[1]}
    code, out, err = run([arg.format(**names) for arg in argv], capsys)
    assert code == ExitCode.USAGE and out == ""
    assert err.startswith("error: ") and "missing.difypkg" in err.splitlines()[0]
    assert all(line.startswith("tip: ") for line in err.splitlines()[1:])


def test_unknown_command_and_missing_argument_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["bogus", "--json"], capsys)
    assert code == ExitCode.USAGE and document(out)["command"] is None and "No such command" in err
    code, out, err = run(["keygen", "--json"], capsys)
    assert code == ExitCode.USAGE and document(out)["command"] == "keygen" and "Missing argument 'NAME'" in err


# Friendly edges: found in the first second, saying what to write instead.


def test_arch_aliases() -> None:
    assert [canonical_arch(name) for name in ("x86_64", "AARCH64", "amd64", "arm64", "all")] == [
        "amd64",
        "arm64",
        "amd64",
        "arm64",
        "all",
    ]
    assert chosen_arches("x86_64", ("arm64",)) == ("amd64",)
    assert chosen_arches("all", ()) == ("amd64", "arm64")
    assert [target.arch for target in make_targets("3.12", ["aarch64", "x86_64"])] == ["amd64", "arm64"]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64", "AMD64", "all"])
def test_pack_accepts_arch_aliases(arch: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["pack", str(tmp_path / "missing.difypkg"), "--arch", arch], capsys)
    assert code == ExitCode.USAGE and "no such file" in err  # got past --arch


@pytest.mark.parametrize(
    ("argv", "message", "tip"),
    [
        (["--python", "3.99"], "--python '3.99': give a CPython version from 3.10 to 3.13", "3.12 venv"),
        (
            ["--index-url", "index.example.com/simple"],
            "--index-url 'index.example.com/simple' has no scheme",
            "https://index.example.com/simple",
        ),
        (["--extra-index-url", "nexus:8081/simple"], "--extra-index-url 'nexus:8081/simple' has no scheme", ""),
        (["--index-url", "ftp://mirror/simple"], "--index-url 'ftp://mirror/simple': only http:// and https://", ""),
        (["--marketplace-url", "marketplace.example.com"], "--marketplace-url", "https://marketplace.example.com"),
        (["--arch", "sparc"], "Invalid value for '--arch'", "pack --help"),
    ],
)
def test_bad_values_are_usage_errors_before_any_work(
    argv: list[str], message: str, tip: str, package: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    started = time.monotonic()
    code, out, err = run(["pack", str(package), *argv, "--json"], capsys)
    assert time.monotonic() - started < 1.0
    assert code == ExitCode.USAGE
    lines = err.splitlines()
    assert lines[0].startswith(f"error: {message}") and tip in "\n".join(lines[1:])
    assert document(out)["error"]["exit_code"] == 2  # type: ignore[index]


def test_a_bad_index_url_from_the_environment_names_the_variable(
    package: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UV_INDEX_URL", "index.example.com/simple")
    code, _, err = run(["pack", str(package)], capsys)
    assert code == ExitCode.USAGE
    assert err.startswith("error: UV_INDEX_URL (read as --index-url) 'index.example.com/simple' has no scheme")


def test_a_password_in_a_url_without_scheme_is_masked(package: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["pack", str(package), "--index-url", "me:s3cret@nexus.example.com/simple", "--json"], capsys)
    assert code == ExitCode.USAGE and "s3cret" not in out + err
    assert "'me:****@nexus.example.com/simple' has no scheme" in err


def test_a_supported_python_other_than_312_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["pack", str(tmp_path / "missing"), "--python", "3.13"], capsys)
    assert code == ExitCode.USAGE and "no such file" in err  # got past --python


def test_pack_without_version_says_which_version_it_took(
    web: FakeWeb, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = {"latest_version": "0.0.3", "latest_package_identifier": None}
    body = json.dumps({"data": {"plugin": plugin}}).encode()
    web.route("/api/v1/plugins/langgenius/demo", Reply(body=body, content_type="application/json"))
    code, _, err = run(["pack", "langgenius/demo", "--marketplace-url", web.url, "--no-verify"], capsys)
    assert "the latest version on the Marketplace is langgenius/demo:0.0.3" in err
    assert code == ExitCode.NETWORK  # the fake Marketplace has no package to download
    assert "error: langgenius/demo:0.0.3: not on the Marketplace" in err


def test_a_bundle_path_without_its_suffix_is_refused_before_any_work(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    argv = ["pack", str(plugin), "-o", str(tmp_path / "out"), "--bundle", str(tmp_path / "b.zip"), "--no-verify"]
    code, _out, err = run(argv, capsys)
    assert code == ExitCode.USAGE
    assert err.splitlines() == [
        f"error: {tmp_path / 'b.zip'}: a bundle file must end in .difybndl",
        "tip: Dify's console tells by the name",
    ]
    assert not (tmp_path / "out").exists()

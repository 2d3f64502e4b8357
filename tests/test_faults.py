"""Faults of the machine and the network: full or read-only folders are found before any download, every HTTP
fault is a network error (exit 6), and -v shows the commands run rather than the HTTP library's debug."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin
from dify_repack.cli import main
from dify_repack.errors import EnvironmentProblem, NetworkError
from dify_repack.http import download, make_client
from fakeweb import Reply, serve

needs_mounts = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare -m for a private tmpfs"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_", "DIFY_", "PYTHON"))}
    return {**env, "PIP_CONFIG_FILE": os.devnull, "TMPDIR": str(tmp_path / "tmp"), **extra}


def _pack_with_mount(
    tmp_path: Path, index: LocalIndex, folder: str, mount_options: str
) -> subprocess.CompletedProcess[str]:
    """Run pack with ``folder`` (out, cache or tmp below ``tmp_path``) on a tmpfs private to that run."""
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    for name in ("out", "cache", "tmp"):
        (tmp_path / name).mkdir()
    pack = [sys.executable, "-m", "dify_repack", "pack", str(plugin), "--no-verify", "--index-url", index.url]
    pack += ["-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    script = f'mount -t tmpfs -o {mount_options} tmpfs "$1" && shift && exec "$@"'
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", str(tmp_path / folder), *pack],
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@needs_mounts
@pytest.mark.parametrize("folder", ["out", "cache", "tmp"])
@pytest.mark.parametrize(
    ("mount_options", "says"),
    [("ro", "Read-only file system"), ("size=1m", "MiB free")],
    ids=["read-only", "full"],
)
def test_an_unusable_folder_is_found_before_any_download(
    tmp_path: Path, index: LocalIndex, folder: str, mount_options: str, says: str
) -> None:
    asked = len(index.requests)
    result = _pack_with_mount(tmp_path, index, folder, mount_options)
    assert result.returncode == 9, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(tmp_path / folder) in errors[0] and says in errors[0], result.stderr
    assert "tip:" in result.stderr and "Traceback" not in result.stderr
    assert index.requests[asked:] == []  # not even the resolution asked the index
    assert not list((tmp_path / "out").iterdir())


@needs_mounts
def test_a_disk_that_fills_during_a_download_is_exit_9_naming_the_folder(tmp_path: Path) -> None:
    """ENOSPC in the middle of a download: the folder is named and the partial file removed."""
    full = tmp_path / "small"
    full.mkdir()
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from dify_repack.errors import EnvironmentProblem\n"
        "from dify_repack.http import download, make_client\n"
        "try:\n"
        "    with make_client() as client:\n"
        "        download(client, sys.argv[1], Path(sys.argv[2]) / 'big.whl')\n"
        "except EnvironmentProblem as error:\n"
        "    print(error.message)\n"
        "    print(sorted(p.name for p in Path(sys.argv[2]).iterdir()))\n"
    )
    with serve() as web:
        web.route("/big.whl", Reply(body=b"x" * (2 * 1024 * 1024)))
        script = 'mount -t tmpfs -o size=256k tmpfs "$1" && shift && exec "$@"'
        fetch = [sys.executable, "-c", code, web.url + "/big.whl", str(full)]
        result = subprocess.run(
            ["unshare", "-m", "sh", "-c", script, "sh", str(full), *fetch],
            env=_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    message, listing = result.stdout.splitlines()
    assert message == f"{full}: cannot write there: No space left on device"
    assert listing == "[]"


def test_cannot_write_says_what_is_wrong_and_where_to_go() -> None:
    full = EnvironmentProblem.cannot_write(Path("/c"), OSError(errno.ENOSPC, "No space left on device"))
    assert full.message == "/c: cannot write there: No space left on device" and "free some space" in str(full.tip)
    denied = EnvironmentProblem.cannot_write(Path("/o"), PermissionError(errno.EACCES, "Permission denied"))
    assert "writable" in str(denied.tip) and "-o" in str(denied.tip)
    assert EnvironmentProblem.cannot_write(None, OSError(errno.EROFS, "Read-only")).exit_code == 9


@pytest.mark.parametrize(
    ("reply", "says"),
    [
        ("loop", "too many redirects"),
        ("ftp", "not http or https"),
        ("no-location", "HTTP 302, a redirect without a Location"),
        ("bad-gzip", "download interrupted"),
    ],
)
def test_http_faults_are_network_errors(tmp_path: Path, reply: str, says: str) -> None:
    with serve() as web:
        web.redirect("/loop", "/loop")
        web.redirect("/ftp", "ftp://files.invalid/plugin.difypkg")
        web.route("/no-location", Reply(302))
        web.route("/bad-gzip", Reply(body=b"not gzip at all", headers={"Content-Encoding": "gzip"}))
        with make_client() as client, pytest.raises(NetworkError, match=says):
            download(client, f"{web.url}/{reply}", tmp_path / "file", backoff=0.01)
    assert list(tmp_path.iterdir()) == []


def test_a_redirect_loop_on_a_url_source_is_exit_6(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with serve() as web:
        web.redirect("/p/demo.difypkg", "/p/demo.difypkg")
        argv = ["pack", f"{web.url}/p/demo.difypkg", "-o", str(tmp_path / "out"), "--no-verify"]
        assert main([*argv, "--cache-dir", str(tmp_path / "cache")]) == 6
    err = capsys.readouterr().err
    assert "too many redirects" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


def test_verbose_shows_the_commands_and_their_output_not_http_debug(tmp_path: Path, index: LocalIndex) -> None:
    plugin = make_plugin(tmp_path / "plugin", {"requirements.txt": "dify_plugin==0.7.4\n"})
    (tmp_path / "tmp").mkdir()
    argv = [sys.executable, "-m", "dify_repack", "-v", "pack", str(plugin), "--no-verify", "--index-url", index.url]
    argv += ["-o", str(tmp_path / "out"), "--cache-dir", str(tmp_path / "cache")]
    result = subprocess.run(argv, env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    commands = [line for line in lines if line.startswith("$ ")]
    assert any(" pip compile " in line or " lock" in line for line in commands), commands
    version_asked = lines.index(next(line for line in lines if line.startswith("$ ") and line.endswith(" --version")))
    assert lines[version_asked + 1].startswith("  uv "), "a command's output follows it, indented"
    assert not [line for line in lines if line.startswith(("httpx", "httpcore"))]

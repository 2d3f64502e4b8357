"""One network identity for uv and our downloads: index logins and CA trust, against real local servers.

A private index needs a login (HTTP basic auth) or speaks TLS with a private CA; `pack` must get through with
the login in the URL, in a netrc or a keyring, and with the CA given by --cert or the usual variables — or fail
with exit 6 and one line that names the problem. A password never shows in output, JSON, logs or the package,
and never goes to another host.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from builders import LocalIndex, make_plugin, make_sdist, make_wheel, serve_index
from dify_repack import uvbin
from dify_repack.cli import main
from dify_repack.credentials import Credentials, Indexes, index_credentials, split_userinfo
from dify_repack.errors import NetworkError
from dify_repack.http import download, make_client, ssl_context
from dify_repack.runner import clean_env
from fakeweb import FakeWeb, PrivateCA, Reply, private_ca, serve

USER, PASSWORD = "alice", "s3cret-pw"
BASIC = Credentials(USER, PASSWORD).header()
PYPROJECT = """\
[project]
name = "demo"
version = "0.1.0"
requires-python = ">=3.12"
dependencies = ["dify_plugin", "helper", "puresdist"]
"""


def _publish(index: LocalIndex) -> LocalIndex:
    make_wheel(index.files, "dify_plugin", "0.7.4")
    make_wheel(index.files, "helper", "1.0.0")
    make_sdist(index.files, "puresdist", "1.0.0", mode="pure")  # built here: its sdist is downloaded with the login
    index.publish()
    return index


@pytest.fixture(scope="module")
def auth_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    with serve_index(tmp_path_factory.mktemp("auth-index"), auth=(USER, PASSWORD)) as index:
        yield _publish(index)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> PrivateCA:
    return private_ca(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_index(tmp_path_factory: pytest.TempPathFactory, ca: PrivateCA) -> Iterator[LocalIndex]:
    with serve_index(tmp_path_factory.mktemp("tls-index"), tls=(ca.cert, ca.key)) as index:
        yield _publish(index)


@pytest.fixture(autouse=True)
def _own_network_settings(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No netrc or CA of the machine; and --cert/--native-tls set variables, which must not outlive a test."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_DIR", "UV_SYSTEM_CERTS"):
        monkeypatch.setenv(name, "")  # records the machine's value, restored afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def with_login(url: str, user: str = USER, password: str = PASSWORD) -> str:
    return url.replace("://", f"://{user}:{password}@", 1)


def pack_argv(plugin: Path, out: Path, cache: Path, index_url: str, *extra: str) -> list[str]:
    return ["pack", str(plugin), "-o", str(out), "--cache-dir", str(cache), "--index-url", index_url, *extra]


def plugin_with_pyproject(tmp_path: Path) -> Path:
    plugin = tmp_path / "plugin"
    make_plugin(plugin, {"requirements.txt": "dify_plugin\nhelper\npuresdist\n", "pyproject.toml": PYPROJECT})
    return plugin


def failed_pack(tmp_path: Path, index_url: str, capsys: pytest.CaptureFixture[str]) -> list[str]:
    """The stderr lines of a pack that reaches ``index_url`` and fails with exit 6 (a network error)."""
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", index_url)
    assert main([*argv, "--no-verify", "-q"]) == 6
    return capsys.readouterr().err.strip().splitlines()


def package_text(out: Path) -> str:
    (package,) = out.glob("*.difypkg")
    with zipfile.ZipFile(package) as archive:
        return "\n".join(
            archive.read(name).decode("utf-8", "replace") for name in archive.namelist() if not name.endswith(".whl")
        )


# Logins


def test_pack_with_the_login_in_the_url_uses_it_for_uv_and_every_download(
    tmp_path: Path, auth_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    auth_index.seen.clear()
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", with_login(auth_index.url))
    assert main([*argv, "--no-verify", "--json"]) == 0
    captured = capsys.readouterr()
    assert PASSWORD not in captured.out + captured.err
    assert json.loads(captured.out)["status"] == "success"
    ours = [request for request in auth_index.seen if request.user_agent.startswith("dify-repack")]
    assert {request.path.rsplit("/", 1)[-1] for request in ours} >= {
        "helper-1.0.0-py3-none-any.whl",
        "puresdist-1.0.0.tar.gz",
    }
    assert all(request.authorization == BASIC for request in auth_index.seen), "uv and httpx both log in"
    # The package names neither the index nor the login: it installs from ./wheels only.
    text = package_text(tmp_path / "out")
    assert PASSWORD not in text
    assert auth_index.url.split("//", 1)[1].split("/", 1)[0] not in text


def test_pack_with_a_netrc(tmp_path: Path, auth_index: LocalIndex, monkeypatch: pytest.MonkeyPatch) -> None:
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(netrc))
    auth_index.seen.clear()
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", auth_index.url)
    assert main([*argv, "--no-verify", "-q"]) == 0
    assert any(request.user_agent.startswith("dify-repack") for request in auth_index.seen)
    assert all(request.authorization == BASIC for request in auth_index.seen)


class FakeKeyring:
    """The two calls of the ``keyring`` API that are used, answering for one service."""

    def __init__(self, service: str) -> None:
        self.service = service

    def get_credential(self, service: str, username: str | None) -> Credentials | None:
        return Credentials(USER, PASSWORD) if service == self.service else None

    def get_password(self, service: str, username: str) -> str | None:
        return PASSWORD if (service, username) == (self.service, USER) else None


def test_a_keyring_login_when_keyring_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "keyring", FakeKeyring("https://corp.example/simple"))
    expected = Credentials(USER, PASSWORD)
    assert index_credentials("https://corp.example/simple") == ("https://corp.example/simple", expected)
    # A user name in the URL takes its password from the keyring, as pip does.
    assert index_credentials(f"https://{USER}@corp.example/simple")[1] == expected
    indexes = Indexes("https://corp.example/simple")
    assert indexes.uv_args() == ["--default-index", "repack0=https://corp.example/simple"]
    assert indexes.uv_env() == {"UV_INDEX_REPACK0_USERNAME": USER, "UV_INDEX_REPACK0_PASSWORD": PASSWORD}


def test_pack_with_a_keyring_login_gives_it_to_uv_too(
    tmp_path: Path, auth_index: LocalIndex, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "keyring", FakeKeyring(auth_index.url))
    auth_index.seen.clear()
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", auth_index.url)
    assert main([*argv, "--no-verify", "-q"]) == 0
    assert {request.user_agent.startswith("dify-repack") for request in auth_index.seen} == {True, False}
    assert all(request.authorization == BASIC for request in auth_index.seen)


def test_logins_reach_uv_as_variables_never_in_its_command_line() -> None:
    indexes = Indexes(with_login("https://a.example/simple"), (with_login("https://b.example/simple", "bob", "p@ss"),))
    args = " ".join(indexes.uv_args())
    assert "s3cret" not in args and "p@ss" not in args
    assert indexes.uv_args() == [
        "--default-index",
        "repack0=https://a.example/simple",
        "--index",
        "repack1=https://b.example/simple",
    ]
    assert indexes.uv_env() == {
        "UV_INDEX_REPACK0_USERNAME": USER,
        "UV_INDEX_REPACK0_PASSWORD": PASSWORD,
        "UV_INDEX_REPACK1_USERNAME": "bob",
        "UV_INDEX_REPACK1_PASSWORD": "p@ss",
    }
    assert split_userinfo("https://u%40corp:p%3Aw@h.example:8443/simple") == (
        "https://h.example:8443/simple",
        "u@corp",
        "p:w",
    )


def test_pack_without_the_login_fails_with_one_line(
    tmp_path: Path, auth_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    assert failed_pack(tmp_path, auth_index.url, capsys) == [
        f"error: the package index {auth_index.url} refused access (401 Unauthorized): the login is missing or wrong",
        "tip: give it in the URL as USER:PASSWORD@ before the host, in ~/.netrc (or the file $NETRC names), or in a "
        "keyring",
    ]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_a_wrong_password_is_never_shown_in_any_phase(
    tmp_path: Path, auth_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    wrong = with_login(auth_index.url, USER, "wrong-secret")
    plugin = plugin_with_pyproject(tmp_path)
    # Resolution: uv is refused.
    assert main([*pack_argv(plugin, tmp_path / "out", tmp_path / "cache", wrong), "--no-verify", "--json"]) == 6
    # A URL source: the download is refused.
    source = with_login(auth_index.url.replace("/simple", "/plugin.difypkg"), USER, "wrong-secret")
    assert main(["pack", source, "-o", str(tmp_path / "out"), "--no-verify", "--json"]) == 6
    captured = capsys.readouterr()
    assert "wrong-secret" not in captured.out + captured.err
    assert f"{USER}:****@" in captured.out + captured.err
    # Fetching a uv for verification through the same index.
    with pytest.raises(NetworkError) as caught:
        uvbin.fetch_uv("0.0.1", tmp_path / "cache", Indexes(wrong))
    assert "wrong-secret" not in f"{caught.value} {caught.value.tip}"


def test_verbose_logs_never_show_the_password(tmp_path: Path, auth_index: LocalIndex) -> None:
    source = with_login(auth_index.url.replace("/simple", "/files/helper-1.0.0-py3-none-any.whl"))
    plugin = plugin_with_pyproject(tmp_path)
    runs = [
        [source, "-o", str(tmp_path / "a")],  # a URL source: httpx logs the URL it asks for
        pack_argv(plugin, tmp_path / "b", tmp_path / "cache", with_login(auth_index.url))[1:],
    ]
    env = clean_env({"NETRC": str(tmp_path / "no-netrc")})
    for argv in runs:
        result = subprocess.run(
            [sys.executable, "-m", "dify_repack", "-v", "pack", *argv, "--no-verify"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert result.returncode in (0, 3), result.stderr[-2000:]  # the wheel is no plugin: exit 3 after download
        assert PASSWORD not in result.stdout + result.stderr


# Redirects


@pytest.fixture
def two_hosts() -> Iterator[tuple[FakeWeb, FakeWeb]]:
    with serve() as index, serve(host="127.0.0.2") as other:
        yield index, other


def test_a_login_follows_a_redirect_on_its_host_and_never_to_another(
    tmp_path: Path, two_hosts: tuple[FakeWeb, FakeWeb]
) -> None:
    index, other = two_hosts
    index.route("/files/a.whl", Reply(body=b"wheel"))
    index.redirect("/moved/a.whl", "/files/a.whl")
    index.redirect("/cdn/a.whl", other.url + "/a.whl")
    other.route("/a.whl", Reply(body=b"wheel"))
    indexes = Indexes(with_login(index.url + "/simple"))
    with make_client(auth=indexes.auth()) as client:
        download(client, index.url + "/moved/a.whl", tmp_path / "same")
        download(client, index.url + "/cdn/a.whl", tmp_path / "other")
    assert [seen.headers.get("authorization") for seen in index.requests] == [BASIC] * 3
    assert [seen.headers.get("authorization") for seen in other.requests] == [None]


def test_a_netrc_login_stays_on_its_host_across_redirects(
    tmp_path: Path, two_hosts: tuple[FakeWeb, FakeWeb], monkeypatch: pytest.MonkeyPatch
) -> None:
    index, other = two_hosts
    (tmp_path / "netrc").write_text(f"machine 127.0.0.1 login {USER} password {PASSWORD}\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))
    index.redirect("/cdn/a.whl", other.url + "/a.whl")
    other.route("/a.whl", Reply(body=b"wheel"))
    with make_client(auth=Indexes(index.url + "/simple").auth()) as client:
        download(client, index.url + "/cdn/a.whl", tmp_path / "a.whl")
    assert index.requests[0].headers.get("authorization") == BASIC
    assert other.requests[0].headers.get("authorization") is None


# Certificates


@pytest.mark.parametrize("how", ["--cert", "REQUESTS_CA_BUNDLE", "SSL_CERT_FILE"])
def test_pack_trusts_a_private_ca(
    how: str, tmp_path: Path, tls_index: LocalIndex, ca: PrivateCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    extra = ["--cert", str(ca.ca)] if how == "--cert" else []
    if how != "--cert":
        monkeypatch.setenv(how, str(ca.ca))
    tls_index.seen.clear()
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", tls_index.url)
    assert main([*argv, *extra, "--no-verify", "-q"]) == 0
    assert any(request.user_agent.startswith("dify-repack") for request in tls_index.seen), "our downloads too"


def test_an_untrusted_certificate_is_one_error_naming_the_flags(
    tmp_path: Path, tls_index: LocalIndex, capsys: pytest.CaptureFixture[str]
) -> None:
    assert failed_pack(tmp_path, tls_index.url, capsys) == [
        f"error: {tls_index.url}: the server's TLS certificate is not trusted (invalid peer certificate: UnknownIssuer)",
        "tip: trust your CA with --cert FILE (or SSL_CERT_FILE / REQUESTS_CA_BUNDLE), or the system's trust store "
        "with --native-tls",
    ]


def test_native_tls_reaches_uv_and_httpx_alike(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert main(["pack", "--native-tls", str(tmp_path / "missing")]) == 2  # the flag applies before the source
    assert clean_env()["UV_SYSTEM_CERTS"] == "1"
    context = ssl_context()  # the system store (truststore when installed): not certifi's roots alone
    assert context.verify_mode.name == "CERT_REQUIRED"
    monkeypatch.delenv("UV_SYSTEM_CERTS")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(tmp_path / "ca.pem"))
    (tmp_path / "ca.pem").write_text("")
    assert clean_env()["SSL_CERT_FILE"] == str(tmp_path / "ca.pem"), "uv reads only SSL_CERT_FILE"


def test_a_missing_or_unreadable_ca_bundle_is_a_usage_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(tmp_path / "missing.pem"))
    assert main(["pack", "https://127.0.0.1:9/x.difypkg", "--no-verify"]) == 2
    assert f"error: SSL_CERT_FILE={tmp_path / 'missing.pem'}: no such file" in capsys.readouterr().err
    (tmp_path / "bad.pem").write_text("not a certificate\n")
    assert main(["pack", "https://127.0.0.1:9/x.difypkg", "--no-verify", "--cert", str(tmp_path / "bad.pem")]) == 2
    assert f"error: {tmp_path / 'bad.pem'}: not a PEM file of CA certificates" in capsys.readouterr().err


def test_the_machines_uv_settings_pass_and_the_packages_settings_do_not(monkeypatch: pytest.MonkeyPatch) -> None:
    machine = {
        "UV_PYTHON_INSTALL_MIRROR": "https://mirror.example/python",
        "UV_PYTHON_DOWNLOADS": "manual",
        "UV_PYTHON_INSTALL_DIR": "/opt/pythons",
        "UV_SYSTEM_CERTS": "1",
        "UV_HTTP_TIMEOUT": "90",
        "UV_KEYRING_PROVIDER": "subprocess",
        "HTTPS_PROXY": "http://proxy.example:3128",
    }
    package = {
        "UV_INDEX_URL": "https://elsewhere.example/simple",
        "UV_INDEX": "https://elsewhere.example/simple",
        "UV_FIND_LINKS": "/wheels",
        "UV_OFFLINE": "1",
        "UV_RESOLUTION": "lowest",
        "UV_PRERELEASE": "allow",
        "UV_EXCLUDE_NEWER": "2020-01-01",
        "UV_CONSTRAINT": "/c.txt",
        "UV_NO_BINARY": "1",
        "UV_CACHE_DIR": "/elsewhere",
        "UV_PYTHON": "3.8",
        "PIP_INDEX_URL": "https://elsewhere.example/simple",
        "PYTHONPATH": "/x",
    }
    logins = {"UV_INDEX_NEXUS_USERNAME": "u", "UV_INDEX_NEXUS_PASSWORD": "p"}
    env = clean_env(base={**machine, **package, **logins})
    assert {name: env[name] for name in machine} == machine
    assert not (set(package) | set(logins)) & set(env), "a replay runs the plugin's code: no login goes there"
    for name, value in logins.items():
        monkeypatch.setenv(name, value)
    assert Indexes("https://nexus.example/simple").uv_env() == logins, "the index commands get them"


# The daemon's CPython, up front


@pytest.fixture
def no_python312(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """A host with no CPython 3.12 anywhere: not in PATH, not under pyenv, not managed by uv."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "empty-pyenv"))
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(tmp_path / "empty-uv-pythons"))
    uvbin._find_python.cache_clear()
    yield
    uvbin._find_python.cache_clear()


@pytest.fixture
def plain_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    with serve_index(tmp_path_factory.mktemp("plain-index")) as index:
        yield _publish(index)


@pytest.mark.usefixtures("no_python312")
@pytest.mark.parametrize("verify", ["--verify", "--no-verify"])
def test_no_cpython_fails_at_once_before_any_request(
    verify: str,
    tmp_path: Path,
    plain_index: LocalIndex,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    assert uvbin.find_python("3.12") is None, "the fixture hides every CPython 3.12"
    uvbin._find_python.cache_clear()
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", plain_index.url)
    assert main([*argv, verify, "-q"]) == 9
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith(
        "error: no CPython 3.12 on this host (PATH, pyenv, uv-managed), and UV_PYTHON_DOWNLOADS=never"
    )
    assert err[1].startswith("tip: install it with `uv python install 3.12` (UV_PYTHON_INSTALL_MIRROR names a mirror)")
    # Proven by order (no request reached the index), not by a timer that a loaded machine could fail.
    assert plain_index.requests == [], "no resolution, no download before the check"


@pytest.mark.usefixtures("no_python312")
def test_no_cpython_is_found_before_a_source_is_downloaded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "manual")  # uv installs only when asked by its user
    with serve() as web:
        web.route("/plugin.difypkg", Reply(body=b"PK\x03\x04"))
        assert main(["pack", web.url + "/plugin.difypkg", "-o", str(tmp_path / "out"), "-q"]) == 9
        assert web.requests == []
    assert "UV_PYTHON_DOWNLOADS=manual" in capsys.readouterr().err


@pytest.mark.usefixtures("no_python312")
def test_uv_installs_a_managed_cpython_from_the_mirror_the_machine_names(
    tmp_path: Path, plain_index: LocalIndex, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # uv's default is to download; its mirror setting reaches it. Offline here, the mirror is a local server
    # without the file: the install fails, still before any request to the index.
    with serve() as mirror:
        monkeypatch.setenv("UV_PYTHON_INSTALL_MIRROR", mirror.url + "/python")
        argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", plain_index.url)
        assert main([*argv, "--no-verify"]) == 9
        assert any(
            request.target.startswith("/python/") and "cpython-3.12" in request.target for request in mirror.requests
        )
    err = capsys.readouterr().err
    assert "no CPython 3.12 on this host: uv installs a managed one" in err
    assert "error: no CPython 3.12 on this host, and `uv python install 3.12` failed" in err
    assert plain_index.requests == []


def test_a_managed_cpython_where_the_machine_keeps_them_is_used(
    python312: Path,
    no_python312: None,
    tmp_path: Path,
    plain_index: LocalIndex,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # uv's layout for a managed CPython, here a link to the host's real one; only uv's discovery finds it.
    managed = tmp_path / "uv-pythons"
    interpreter = managed / "cpython-3.12.99-linux-x86_64-gnu" / "bin" / "python3.12"
    interpreter.parent.mkdir(parents=True)
    interpreter.symlink_to(python312)
    monkeypatch.setenv("UV_PYTHON_INSTALL_DIR", str(managed))
    monkeypatch.setenv("UV_PYTHON_DOWNLOADS", "never")
    assert uvbin.find_python("3.12") == interpreter
    argv = pack_argv(plugin_with_pyproject(tmp_path), tmp_path / "out", tmp_path / "cache", plain_index.url)
    assert main([*argv, "--no-verify", "-q"]) == 0  # uv lock ran with it

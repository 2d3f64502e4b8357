"""The network identity uv and our downloads share: index logins, and which certificates to trust.

Logins are found once per index, then used by uv and by our downloads alike, and only on that host.

Where a login comes from, in pip's and uv's order: the index URL's ``user:password@``; then ``$NETRC`` or
``~/.netrc`` (stdlib ``netrc``); then ``keyring`` when it is installed (optional, never a dependency). A URL
with a user name but no password takes the password from netrc or the keyring, as pip does.

uv gets every login through ``UV_INDEX_<NAME>_USERNAME/PASSWORD`` for a named index (never in its argv, where
other users of the machine could read it); httpx gets an ``Authorization`` header per request whose origin is
an index's, or whose host netrc names, as uv does for files served from another host. A redirect to another
origin loses the header (httpx drops it) and gets that origin's own login, if any.

Trust is read from the variables uv reads too, so resolution and downloads trust the same servers:
``SSL_CERT_FILE`` (else ``REQUESTS_CA_BUNDLE``; ``--cert`` sets it) replaces the default roots, and
``UV_SYSTEM_CERTS``/``UV_NATIVE_TLS`` (``--native-tls`` sets it) adds the system's trust store. The default,
as for uv, is the Mozilla roots (certifi). ``runner.clean_env`` hands the same settings to uv.
httpx is imported only where a client is made: the CLI starts without it.
"""

from __future__ import annotations

import base64
import logging
import netrc
import os
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlsplit, urlunsplit

from .errors import NetworkError, UsageError
from .redaction import redact

if TYPE_CHECKING:
    import httpx

logger = logging.getLogger(__name__)

Origin = tuple[str, str, int | None]
DEFAULT_INDEX = "https://pypi.org/simple"
# uv's name for our indexes: logins then go in UV_INDEX_REPACK<N>_USERNAME/PASSWORD, not in argv.
_INDEX_NAME = "repack"
# Logins the machine gives uv for indexes it names in its own uv.toml: for index commands only.
_UV_INDEX_LOGIN = re.compile(r"UV_INDEX_\w+_(?:USERNAME|PASSWORD)")
_logins_lock = threading.Lock()


CERTIFICATE_TIP = (
    "trust your CA with --cert FILE (or SSL_CERT_FILE / REQUESTS_CA_BUNDLE), "
    "or the system's trust store with --native-tls"
)
_CERTIFICATE_ERROR = re.compile(
    r"CERTIFICATE_VERIFY_FAILED|certificate verify failed|invalid peer certificate|UnknownIssuer|"
    r"self[- ]signed certificate|certificate has expired|NotValidForName|unable to get local issuer",
    re.IGNORECASE,
)
_TRUE = ("1", "true", "yes", "on")


def ca_bundle() -> Path | None:
    """The CA bundle the user named in ``SSL_CERT_FILE`` or ``REQUESTS_CA_BUNDLE``; it must exist."""
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"):
        value = os.environ.get(name)
        if value:
            if not Path(value).is_file():
                raise UsageError(f"{name}={value}: no such file", tip="name a PEM file of CA certificates, or unset it")
            return Path(value)
    return None


def system_certs() -> bool:
    """Whether to trust the system's store (``--native-tls``), as uv decides it."""
    return any(os.environ.get(name, "").lower() in _TRUE for name in ("UV_SYSTEM_CERTS", "UV_NATIVE_TLS"))


def use_tls_options(cert: Path | None, native_tls: bool) -> None:
    """Apply ``--cert``/``--native-tls`` as the variables they stand for, so that uv and httpx both see them."""
    if cert is not None:
        os.environ["SSL_CERT_FILE"] = str(cert)
    if native_tls:
        os.environ["UV_SYSTEM_CERTS"] = "1"


def is_certificate_error(text: str) -> bool:
    return bool(_CERTIFICATE_ERROR.search(text))


def certificate_error(url: str, output: str) -> NetworkError:
    """One message for an untrusted server certificate, from httpx's error or uv's output, naming the fix.

    The reason is the line that says what is wrong with the certificate (uv's hints name only uv's flags).
    """
    lines = [line.strip() for line in output.splitlines() if is_certificate_error(line)]
    reason = lines[-1] if lines else output.strip()
    reason = reason.removeprefix("cause:").removeprefix("Caused by:").strip()
    reason = reason.split("certificate verify failed:", 1)[-1].split("(_ssl", 1)[0].strip(" :)")
    return NetworkError(f"{url}: the server's TLS certificate is not trusted ({reason})", tip=CERTIFICATE_TIP)


@dataclass(frozen=True)
class Credentials:
    username: str
    password: str = field(repr=False)

    def header(self) -> str:
        return "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()


def split_userinfo(url: str) -> tuple[str, str | None, str | None]:
    """``url`` without its ``user:password@``, and the (percent-decoded) user name and password it held."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url, None, None
    userinfo, _, hostport = parts.netloc.rpartition("@")
    user, colon, password = userinfo.partition(":")
    public = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return public, unquote(user) or None, unquote(password) if colon else None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def origin(url: str) -> Origin:
    """(scheme, host, port) as browsers and httpx compare them; a default port is None."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:
        port = None
    return scheme, parts.hostname or "", None if port == _DEFAULT_PORTS.get(scheme) else port


def netrc_path() -> Path:
    return Path(os.environ.get("NETRC") or Path.home() / ".netrc")


def from_netrc(host: str, username: str | None = None) -> Credentials | None:
    """The netrc entry for ``host`` (or its ``default``); uv reads the same file, so both agree."""
    path = netrc_path()
    if not host or not path.is_file():
        return None
    try:
        # An explicit path skips the stdlib's ownership check, which uv does not make either.
        entry = netrc.netrc(str(path)).authenticators(host)
    except (OSError, netrc.NetrcParseError) as exc:
        logger.warning("%s: ignored, it cannot be read (%s)", path, exc)
        return None
    if entry is None or not entry[2]:
        return None
    login, _, password = entry
    if username is not None and login and login != username:
        return None
    return Credentials(username or login, password)


def from_keyring(url: str, username: str | None = None) -> Credentials | None:
    """A login the ``keyring`` package holds for ``url`` or its host; None when keyring is absent or fails."""
    try:
        import keyring
    except ImportError:
        return None
    host = origin(url)[1]
    for service in (url, host):
        try:
            if username is not None:
                password = keyring.get_password(service, username)
                if password:
                    return Credentials(username, password)
                continue
            found = keyring.get_credential(service, None)
        except Exception as exc:  # a keyring backend may fail in any way (locked, no D-Bus): then it has nothing
            logger.info("keyring lookup for %s failed: %s", host, exc)
            return None
        if found is not None and found.password:
            return Credentials(found.username, found.password)
    return None


def index_credentials(url: str) -> tuple[str, Credentials | None]:
    """The public URL of an index and its login, from the URL itself, netrc or the keyring."""
    public, user, password = split_userinfo(url)
    if user is not None and password is not None:
        return public, Credentials(user, password)
    host = origin(public)[1]
    found = from_netrc(host, user) or from_keyring(public, user)
    if found is None and user is not None:
        found = Credentials(user, "")  # a token-style login: the user name is the secret
    return public, found


class HostAuth:
    """Adds a login to each request whose origin is an index's, or whose host netrc names; never elsewhere.

    Installed as an httpx request hook, so it also runs for every redirect hop.
    """

    def __init__(self, logins: dict[Origin, Credentials]) -> None:
        self._logins = dict(logins)
        self._netrc: dict[str, Credentials | None] = {}
        self._lock = threading.Lock()

    def login_for(self, url: httpx.URL) -> Credentials | None:
        found = self._logins.get(origin(str(url)))
        if found is not None:
            return found
        with self._lock:
            if url.host not in self._netrc:
                self._netrc[url.host] = from_netrc(url.host)
            return self._netrc[url.host]

    def __call__(self, request: httpx.Request) -> None:
        if "Authorization" in request.headers:
            return  # the caller's own (a GitHub token) or one httpx kept on a same-origin redirect
        login = self.login_for(request.url)
        if login is not None:
            request.headers["Authorization"] = login.header()


@dataclass(frozen=True)
class Indexes:
    """The package indexes as the user gave them (logins included) and how uv and httpx reach them."""

    url: str = DEFAULT_INDEX
    extra: tuple[str, ...] = ()

    def __repr__(self) -> str:  # options get logged and shown in tracebacks: never with a password
        return redact(f"Indexes(url={self.url!r}, extra={self.extra!r})")

    def logins(self) -> tuple[tuple[str, Credentials | None], ...]:
        """Each index's public URL and login, looked up once (a keyring may ask its user to unlock it)."""
        with _logins_lock:
            found: tuple[tuple[str, Credentials | None], ...] | None = self.__dict__.get("_logins")
            if found is None:
                found = tuple(
                    index_credentials(url) if url != DEFAULT_INDEX else (url, None) for url in (self.url, *self.extra)
                )
                object.__setattr__(self, "_logins", found)  # a cache beside the fields, not one of them
        return found

    def public_urls(self) -> tuple[str, ...]:
        """The index URLs without logins: what may be shown, logged, or keyed on."""
        return tuple(url for url, _ in self.logins())

    def uv_args(self) -> list[str]:
        """Named indexes for uv (the first is the default); ``uv_env`` holds their logins."""
        args = []
        for number, url in enumerate(self.public_urls()):
            args += ["--default-index" if number == 0 else "--index", f"{_INDEX_NAME}{number}={url}"]
        return args

    def uv_env(self) -> dict[str, str]:
        """The logins for the uv commands that talk to the indexes (and the machine's own ``UV_INDEX_*`` ones)."""
        env = {name: value for name, value in os.environ.items() if _UV_INDEX_LOGIN.fullmatch(name)}
        for number, (_, login) in enumerate(self.logins()):
            if login is not None:
                prefix = f"UV_INDEX_{_INDEX_NAME.upper()}{number}"
                env[f"{prefix}_USERNAME"] = login.username
                if login.password:
                    env[f"{prefix}_PASSWORD"] = login.password
        return env

    def auth(self) -> HostAuth:
        """The logins for our own requests, per index origin (netrc covers other hosts, as for uv)."""
        return HostAuth({origin(url): login for url, login in self.logins() if login is not None})

"""HTTP for every download: one client setup honouring proxies and CA bundles, retries, streamed files.

Logins and trust are the ones uv gets (credentials.py), so resolution and downloads reach the same servers.

A download keeps a temporary name until its size and sha256 are checked, so an interrupted run never leaves a
file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import httpx

from . import cancel
from .credentials import HostAuth, ca_bundle, certificate_error, is_certificate_error, system_certs
from .errors import EnvironmentProblem, NetworkError, StatusError, UsageError

_IDENTITY = {"Accept-Encoding": "identity"}
TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "dify-repack"
ProgressCallback = Callable[[int], None]


@dataclass(frozen=True)
class Pace:
    """The slowest body a server may send: once past ``grace`` seconds, at least ``min_rate`` bytes a second on
    average since the body began. A per-read timeout alone lets a server that sends a byte every few seconds
    hold a run forever; this ends it after ``grace`` seconds, or ``size / min_rate`` for a file that started
    fast. Generous on purpose: a slow link shared by parallel downloads, or a scanning proxy that trickles while
    it checks a file and then sends it whole, stays well inside it.
    """

    grace: float = 120.0
    min_rate: float = 1024.0


PACE = Pace()  # read at each call, so that tests can shorten it


def paced(chunks: Iterable[bytes], url: str, pace: Pace | None = None) -> Iterator[bytes]:
    """``chunks`` of a response body as they come; NetworkError once they fall below ``pace`` (default PACE)."""
    limit = pace or PACE
    started = time.monotonic()
    received = 0
    for chunk in chunks:
        received += len(chunk)
        elapsed = time.monotonic() - started
        if elapsed > limit.grace and received < limit.min_rate * elapsed:
            raise NetworkError(
                f"{url}: too slow, {received} bytes in {elapsed:.0f} s (under {limit.min_rate:.0f} bytes/s "
                f"on average after {limit.grace:.0f} s): the server trickles or the link is stalled",
                tip="retry later or from a better-connected machine; check the proxy",
            )
        yield chunk


def read_bounded(response: httpx.Response, url: str, limit: int) -> bytes:
    """A small answer (an index page, a JSON document) whole, at ``pace``; NetworkError past ``limit`` bytes.

    Counted after any Content-Encoding is undone, so neither a huge page nor a small compressed one that
    inflates without end can fill the memory.
    """
    body = bytearray()
    for chunk in paced(response.iter_bytes(), url):
        body += chunk
        if len(body) > limit:
            raise NetworkError(
                f"{url}: the answer is larger than {limit} bytes, far more than this kind of document needs",
                tip="check the URL; a proxy or the server may be sending something else",
            )
    return bytes(body)


def ssl_context() -> ssl.SSLContext:
    """The trust uv has with the same settings: a CA bundle, the system store, or the Mozilla roots.

    ``SSL_CERT_DIR`` (a hashed folder of certificates) adds to any of them, as for uv.
    """
    bundle = ca_bundle()
    folder = os.environ.get("SSL_CERT_DIR")
    try:
        if system_certs():
            try:
                import truststore  # the OS verifier itself (keychain, Windows store), when installed

                context: ssl.SSLContext = truststore.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            except ImportError:
                context = ssl.create_default_context()  # OpenSSL's system paths
            if bundle is not None:
                context.load_verify_locations(cafile=bundle)
        else:  # a bundle replaces the default roots, as it does for uv
            context = ssl.create_default_context(cafile=bundle or _mozilla_roots())
        if folder and Path(folder).is_dir():
            context.load_verify_locations(capath=folder)
    except ssl.SSLError as exc:
        raise UsageError(
            f"{bundle}: not a PEM file of CA certificates ({exc.reason or exc})",
            tip="give --cert (or SSL_CERT_FILE / REQUESTS_CA_BUNDLE) a file of -----BEGIN CERTIFICATE----- blocks",
        ) from None
    return context


def _mozilla_roots() -> str:
    import certifi

    return str(certifi.where())


def make_client(
    *, timeout: float = 60.0, headers: dict[str, str] | None = None, auth: HostAuth | None = None
) -> httpx.Client:
    """A client that follows redirects and reads ``HTTPS_PROXY``/``NO_PROXY`` from the environment.

    ``auth`` adds index logins per request, redirect hops included (see credentials.HostAuth).
    No ``transport=`` here: httpx ignores the proxy variables when given one. open_stream does the retrying.
    """
    return httpx.Client(
        verify=ssl_context(),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 20.0)),
        follow_redirects=True,
        trust_env=True,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        event_hooks={"request": [auth]} if auth is not None else None,
    )


@contextmanager
def open_stream(
    client: httpx.Client,
    url: str,
    *,
    attempts: int = 4,
    backoff: float = 0.5,
    headers: dict[str, str] | None = None,
) -> Iterator[httpx.Response]:
    """GET ``url`` as a stream, retrying transient failures with exponential backoff; raises NetworkError.

    ``headers`` go with this request only; httpx drops ``Authorization`` when a redirect leaves the origin.
    The retries cover getting the response; what the caller's block raises while reading the body is its own.
    """
    response = _send(client, url, attempts=attempts, backoff=backoff, headers=headers)
    try:
        yield response
    finally:
        response.close()


def _send(
    client: httpx.Client, url: str, *, attempts: int, backoff: float, headers: dict[str, str] | None
) -> httpx.Response:
    for attempt in range(1, attempts + 1):
        cancel.check()
        try:
            request = client.build_request("GET", url, headers=headers, extensions={"trace": _track_socket})
            response = client.send(request, stream=True)
        except httpx.TooManyRedirects:
            raise NetworkError(
                f"{url}: too many redirects (a redirect loop?)",
                tip="open the URL in a browser to see where it leads; the server or a proxy is misconfigured",
            ) from None
        except httpx.UnsupportedProtocol as exc:
            raise NetworkError(f"{url}: leads to an address that is not http or https ({exc})") from None
        except httpx.TimeoutException:
            cancel.check()
            if attempt == attempts:
                raise NetworkError(f"{url}: timed out after {attempts} attempts") from None
        except httpx.TransportError as exc:
            cancel.check()  # a stop request shuts the socket: that is no network problem
            if is_certificate_error(str(exc)):
                raise certificate_error(url, str(exc)) from None  # no retry can make it trusted
            if attempt == attempts:
                raise NetworkError(
                    f"{url}: cannot connect ({exc})", tip="check the network, proxy and CA settings"
                ) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            cancel.check()
            raise NetworkError(f"{url}: the request failed ({type(exc).__name__}: {exc})") from None
        else:
            if response.status_code in TRANSIENT_STATUS and attempt < attempts:
                response.close()  # retry below
            elif response.status_code >= 300:  # a redirect without a usable Location ends here too
                response.close()
                raise StatusError(describe_status(url, response.status_code), url=url, status=response.status_code)
            else:
                return response
        cancel.sleep(backoff * 2 ** (attempt - 1))
    raise NetworkError(f"{url}: still failing after {attempts} attempts")


# Sockets of the requests made here, so that a stop request can shut them down: a thread blocked reading from
# a stalled server then wakes at once instead of after the read timeout. Weak: a closed connection drops out.
_sockets: dict[int, weakref.ref[socket.socket]] = {}


def _track_socket(event: str, info: dict[str, Any]) -> None:
    """httpcore's trace hook: remember each socket it connects (and the TLS socket that replaces it)."""
    if event.endswith((".connect_tcp.complete", ".start_tls.complete")):
        sock = info["return_value"].get_extra_info("socket")
        if isinstance(sock, socket.socket):
            key = id(sock)
            _sockets[key] = weakref.ref(sock, lambda _, key=key: _sockets.pop(key, None))  # type: ignore[misc]


def _shut_sockets() -> None:
    for ref in tuple(_sockets.values()):
        sock = ref()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


cancel.on_request(_shut_sockets)


def describe_status(url: str, status: int) -> str:
    if status == 404:
        return f"{url}: not found (HTTP 404)"
    if status in (401, 403):
        return f"{url}: access denied (HTTP {status}); check the login (in the URL, ~/.netrc or a keyring) or token"
    if status == 429:
        return f"{url}: rate limited (HTTP 429); wait and retry, or use a token"
    if status < 400:
        return f"{url}: HTTP {status}, a redirect without a Location to follow"
    return f"{url}: HTTP {status}"


def download(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
    headers: dict[str, str] | None = None,
    magic: bytes | None = None,
    attempts: int = 4,
    backoff: float = 0.5,
    pace: Pace | None = None,
) -> str:
    """Stream ``url`` to ``dest`` atomically; check ``sha256``/``size`` when given; return the sha256.

    ``magic`` is how the file must start (``b"PK\\x03\\x04"`` for a zip): an HTML page or other body served
    with status 200, such as a login or error page, is then refused before anything trusts it.
    """
    # A name of its own per download: parallel runs may fetch the same file into the same cache.
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.{threading.get_ident()}.part")
    digest = hashlib.sha256()
    received = 0
    try:
        with (
            # The file as stored, as pip fetches it: a Content-Encoding is never inflated (a gzip bomb would be).
            open_stream(
                client, url, attempts=attempts, backoff=backoff, headers=_IDENTITY | (headers or {})
            ) as response,
            _create(temp) as out,
        ):
            content_type = response.headers.get("Content-Type", "")
            if magic is not None and content_type.startswith("text/html"):
                raise NetworkError(
                    f"{url}: answered with an HTML page, not the file (a login, error or landing page?)",
                    tip="open the URL in a browser to see what it serves; use the direct download link",
                )
            try:
                # Chunks as they arrive (no fixed size to wait for): a stop request is seen within one read.
                for chunk in paced(response.iter_raw(), url, pace):
                    cancel.check()
                    try:
                        out.write(chunk)
                    except OSError as exc:
                        raise EnvironmentProblem.cannot_write(dest.parent, exc) from None
                    digest.update(chunk)
                    received += len(chunk)
                    if progress:
                        progress(len(chunk))
            except httpx.HTTPError as exc:
                cancel.check()  # the stop request shut the socket
                # h11 raises here too when the connection closes before Content-Length bytes arrived.
                # Count bytes off the wire: ``received`` lags, since chunks are buffered before use.
                done = response.num_bytes_downloaded
                raise NetworkError(f"{url}: download interrupted after {done} bytes ({exc})") from None
        if magic is not None:
            _check_magic(url, temp, magic, content_type)
        if size is not None and received != size:
            raise NetworkError(f"{url}: got {received} bytes, the index says {size} (truncated download?)")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise NetworkError(f"{url}: sha256 {actual} does not match the index's {sha256}")
        temp.replace(dest)
        return actual
    finally:
        temp.unlink(missing_ok=True)


def _create(path: Path) -> BinaryIO:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return path.open("wb")
    except OSError as exc:
        raise EnvironmentProblem.cannot_write(path.parent, exc) from None


def _check_magic(url: str, path: Path, magic: bytes, content_type: str) -> None:
    with path.open("rb") as handle:
        head = handle.read(max(len(magic), 60))
    if not head.startswith(magic):
        # The first bytes usually show what came instead: a JSON error, a proxy's notice, an empty body.
        raise NetworkError(
            f"{url}: the answer ({content_type or 'no Content-Type'}) is not the expected file; it starts {head!r}",
            tip="the server sent something else, such as an error message; check the URL",
        )

"""HTTP for every download: one client setup honouring proxies and CA bundles, retries, streamed files.

A download keeps a temporary name until its size and sha256 are checked, so an interrupted run never leaves a
file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import os
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .errors import NetworkError

TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})
USER_AGENT = "dify-repack"
ProgressCallback = Callable[[int], None]


def ssl_context() -> ssl.SSLContext:
    """Trust the bundle named by ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE`` (corporate CAs), else the system's."""
    bundle = os.environ.get("SSL_CERT_FILE") or os.environ.get("REQUESTS_CA_BUNDLE")
    context = ssl.create_default_context(cafile=bundle if bundle and Path(bundle).is_file() else None)
    if not bundle and not context.get_ca_certs():
        import certifi

        context.load_verify_locations(certifi.where())
    return context


def make_client(*, timeout: float = 60.0, headers: dict[str, str] | None = None) -> httpx.Client:
    """A client that follows redirects and reads ``HTTPS_PROXY``/``NO_PROXY`` from the environment."""
    return httpx.Client(
        verify=ssl_context(),
        timeout=httpx.Timeout(timeout, connect=min(timeout, 20.0)),
        follow_redirects=True,
        trust_env=True,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        transport=httpx.HTTPTransport(verify=ssl_context(), retries=2, trust_env=True),
    )


@contextmanager
def open_stream(
    client: httpx.Client, url: str, *, attempts: int = 4, backoff: float = 0.5
) -> Iterator[httpx.Response]:
    """GET ``url`` as a stream, retrying transient failures with exponential backoff; raises NetworkError."""
    for attempt in range(1, attempts + 1):
        try:
            with client.stream("GET", url) as response:
                if response.status_code in TRANSIENT_STATUS and attempt < attempts:
                    pass  # fall through to the retry below, after the body is released
                else:
                    if response.status_code >= 400:
                        raise NetworkError(describe_status(url, response.status_code))
                    yield response
                    return
        except httpx.TimeoutException:
            if attempt == attempts:
                raise NetworkError(f"{url}: timed out after {attempts} attempts") from None
        except httpx.TransportError as exc:
            if attempt == attempts:
                raise NetworkError(f"{url}: cannot connect ({exc})", tip="check the network, proxy and CA settings") from None
        time.sleep(backoff * 2 ** (attempt - 1))
    raise NetworkError(f"{url}: still failing after {attempts} attempts")


def describe_status(url: str, status: int) -> str:
    if status == 404:
        return f"{url}: not found (HTTP 404)"
    if status in (401, 403):
        return f"{url}: access denied (HTTP {status}); check credentials or tokens"
    if status == 429:
        return f"{url}: rate limited (HTTP 429); wait and retry, or use a token"
    return f"{url}: HTTP {status}"


def download(
    client: httpx.Client,
    url: str,
    dest: Path,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: ProgressCallback | None = None,
) -> str:
    """Stream ``url`` to ``dest`` atomically; check ``sha256``/``size`` when given; return the sha256."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    temp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    received = 0
    try:
        with open_stream(client, url) as response, temp.open("wb") as out:
            try:
                for chunk in response.iter_bytes(1024 * 256):
                    out.write(chunk)
                    digest.update(chunk)
                    received += len(chunk)
                    if progress:
                        progress(len(chunk))
            except httpx.HTTPError as exc:
                raise NetworkError(f"{url}: download interrupted after {received} bytes ({exc})") from None
        if size is not None and received != size:
            raise NetworkError(f"{url}: got {received} bytes, the index says {size} (truncated download?)")
        actual = digest.hexdigest()
        if sha256 is not None and actual != sha256.lower():
            raise NetworkError(f"{url}: sha256 {actual} does not match the index's {sha256}")
        os.replace(temp, dest)
        return actual
    finally:
        temp.unlink(missing_ok=True)

"""A small web server on 127.0.0.1 for download tests: canned replies by path, every request recorded.

Tests start one (or several, for cross-host redirects) with ``serve()``; nothing leaves the machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import socketserver
import ssl
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


@dataclass(frozen=True)
class Reply:
    """One canned answer. ``length`` overrides Content-Length (larger than the body: a truncated download)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/octet-stream"
    headers: Mapping[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds before the status line, to make a client time out
    length: int | None = None
    drip: tuple[int, float] | None = None  # the body N bytes at a time, S seconds apart: a slow link, a trickle
    drip_bytes: int | None = None  # only the first this many bytes dripped, the rest at once (a scanning proxy)


@dataclass(frozen=True)
class Seen:
    """A request as the server saw it: the target (path and query, or a full URL when sent to a proxy)."""

    target: str
    headers: Mapping[str, str]  # names in lower case


class FakeWeb:
    """Routes map a path (query ignored) to replies given in turn; the last one repeats. Others get 404."""

    def __init__(self, url: str, stopping: threading.Event) -> None:
        self.url = url
        self.requests: list[Seen] = []
        self._routes: dict[str, list[Reply]] = {}
        self._lock = threading.Lock()
        self._stopping = stopping

    def route(self, path: str, *replies: Reply) -> None:
        self._routes[path] = list(replies)

    def redirect(self, path: str, location: str, status: int = 302) -> None:
        self.route(path, Reply(status, headers={"Location": location}))

    def seen(self, path: str) -> list[Seen]:
        return [request for request in self.requests if request.target.split("?", 1)[0] == path]

    def _answer(self, target: str, headers: Mapping[str, str]) -> Reply:
        with self._lock:
            self.requests.append(Seen(target, headers))
            replies = self._routes.get(target.split("?", 1)[0])
            if not replies:
                return Reply(404, b"not found", "text/plain")
            return replies.pop(0) if len(replies) > 1 else replies[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a handler still sleeping in a timeout test must not hold up the test's end
    web: FakeWeb


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        web = self.server.web
        reply = web._answer(self.path, {name.lower(): value for name, value in self.headers.items()})
        if reply.delay:
            web._stopping.wait(reply.delay)
        try:
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.content_type)
            self.send_header("Content-Length", str(len(reply.body) if reply.length is None else reply.length))
            for name, value in reply.headers.items():
                self.send_header(name, value)
            self.end_headers()
            if reply.drip is None:
                self.wfile.write(reply.body)
            else:
                self._drip(reply, *reply.drip)
        except OSError:
            pass  # the client gave up first, as a timeout test intends

    def _drip(self, reply: Reply, size: int, pause: float) -> None:
        dripped = len(reply.body) if reply.drip_bytes is None else reply.drip_bytes
        for offset in range(0, dripped, size):
            self.wfile.write(reply.body[offset : min(offset + size, dripped)])
            self.wfile.flush()
            if self.server.web._stopping.wait(pause):
                return
        self.wfile.write(reply.body[dripped:])

    def log_message(self, format: str, *args: object) -> None:
        pass  # keep test output clean


def use_tls(server: socketserver.TCPServer, tls: tuple[Path, Path] | None) -> str:
    """Make ``server`` speak TLS with (certificate, key) when given; its URL scheme."""
    if tls is None:
        return "http"
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(*tls)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return "https"


@contextmanager
def serve(*, tls: tuple[Path, Path] | None = None, host: str = "127.0.0.1") -> Iterator[FakeWeb]:
    """A running server; ``tls`` is (certificate, key) for an https:// one; ``host`` another loopback address."""
    server = _Server((host, 0), _Handler)
    scheme = use_tls(server, tls)
    stopping = threading.Event()
    server.web = FakeWeb(f"{scheme}://{host}:{server.server_address[1]}", stopping)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server.web
    finally:
        stopping.set()
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass(frozen=True)
class PrivateCA:
    """A private CA and a server certificate it issued for 127.0.0.1, as a corporate network has them.

    A test trusts ``ca`` through SSL_CERT_FILE or --cert. uv (rustls) refuses a CA certificate used as the
    server's own, hence two certificates.
    """

    ca: Path  # what a client trusts: --cert, SSL_CERT_FILE, REQUESTS_CA_BUNDLE
    cert: Path  # the server's certificate
    key: Path


def private_ca(directory: Path) -> PrivateCA:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, server_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "dify-repack test CA")])
    server_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])

    def build(subject: x509.Name, public: ec.EllipticCurvePublicKey) -> x509.CertificateBuilder:
        return (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(ca_name)
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        )

    ca = (
        build(ca_name, ca_key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )  # keyCertSign, cRLSign
        .sign(ca_key, hashes.SHA256())
    )
    server = (
        build(server_name, server_key.public_key())
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    result = PrivateCA(directory / "ca.pem", directory / "server.pem", directory / "server-key.pem")
    result.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    result.cert.write_bytes(server.public_bytes(serialization.Encoding.PEM))
    result.key.write_bytes(
        server_key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return result

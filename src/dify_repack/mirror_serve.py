"""Serving a wheelhouse at the address of the mirror URL: on loopback while locking, and inside a network
namespace while verifying, where nothing else is reachable.

The namespace (``unshare -n -m``) has only a loopback interface, brought up; ``/etc/hosts`` is bind-mounted over
so the mirror's host name resolves to 127.0.0.1 there; the server listens on the mirror's port. Each replayed
command joins it with ``nsenter``. Run as ``python -m dify_repack.mirror_serve`` it is that namespace's first
process (``setup``, then the server) or the static file server itself (``serve``).
"""

from __future__ import annotations

import argparse
import fcntl
import ipaddress
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

from .errors import EnvironmentProblem, UsageError
from .redaction import shown_line
from .runner import kill_group, run, spawn
from .wheelhouse import FILES_DIR, SIMPLE_DIR, files_url

READY_TIMEOUT = 120.0  # a real index server (devpi) takes a while to start on a busy host


def mirror_address(mirror_url: str) -> tuple[str, int, str]:
    """Host, port and path of an http mirror URL; refuses what cannot travel in a package or be served here."""
    try:
        parts = urlsplit(mirror_url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # an IPv6 bracket left open, a port out of range or not a number
        parts, port = urlsplit(""), 0
    if parts.scheme not in ("http", "https") or not parts.hostname:
        # A slim package's requirements.txt names it: quoted and bounded, as any text from a package.
        raise UsageError(f"{shown_line(mirror_url)}: the mirror URL must be http://HOST[:PORT]/PATH")
    if parts.username or parts.password:
        raise UsageError(
            "the mirror URL is written into the package: it must not carry credentials",
            tip="let the internal index allow anonymous reads of the wheelhouse",
        )
    return parts.hostname, port, parts.path or "/"


class _Handler(SimpleHTTPRequestHandler):
    """The mirror path maps to ``simple/``, its ``../files/`` to ``files/``; anything else is 404."""

    simple_dir: Path
    files_dir: Path
    simple_path: str
    files_path: str

    def translate_path(self, path: str) -> str:
        path = unquote(path.split("?", 1)[0].split("#", 1)[0])
        for prefix, base in ((self.simple_path, self.simple_dir), (self.files_path, self.files_dir)):
            if path.startswith(prefix) or path == prefix.rstrip("/"):
                rest = [part for part in path[len(prefix) :].split("/") if part not in ("", ".", "..")]
                return str(base.joinpath(*rest))
        return str(self.files_dir / ".nothing-here")

    def log_message(self, format: str, *args: object) -> None:
        pass  # the clients' own errors name what they missed


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        # A client hanging up mid-file is normal; its traceback on stderr would fill a pipe nobody reads
        # while the mirror runs inside the namespace, and block the server.
        pass


def make_server(simple_dir: Path, files_dir: Path, mirror_url: str, host: str, port: int) -> ThreadingHTTPServer:
    _, _, path = mirror_address(mirror_url)
    handler = type(
        "MirrorHandler",
        (_Handler,),
        {
            "simple_dir": simple_dir,
            "files_dir": files_dir,
            "simple_path": path.rstrip("/") + "/",
            "files_path": urlsplit(files_url(mirror_url)).path,
        },
    )
    server = _QuietServer((host, port), partial(handler, directory=str(files_dir)))
    server.daemon_threads = True
    return server


@contextmanager
def serve_locally(simple_dir: Path, files_dir: Path, mirror_url: str) -> Iterator[str]:
    """Serve on 127.0.0.1 (a free port) with the mirror URL's paths; yields the index URL to use there."""
    _, _, path = mirror_address(mirror_url)
    server = make_server(simple_dir, files_dir, mirror_url, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}{path}"
    finally:
        server.shutdown()
        server.server_close()


def wheelhouse_server(wheelhouse: Path, mirror_url: str) -> list[str]:
    """The command that serves ``wheelhouse`` at the mirror URL's port (run inside the namespace)."""
    return [sys.executable, "-m", "dify_repack.mirror_serve", "serve", str(wheelhouse.resolve()), mirror_url]


@contextmanager
def serve_in_namespace(mirror_url: str, server: Sequence[str]) -> Iterator[list[str]]:
    """Start ``server`` in a new network namespace where the mirror's address is its own; yields the argv
    prefix that runs a command in that namespace (network cut, the mirror reachable)."""
    host, port, _ = mirror_address(mirror_url)
    if urlsplit(mirror_url).scheme != "http":
        raise UsageError(
            f"{shown_line(mirror_url)}: verification serves the wheelhouse over plain http only",
            tip="verify with an http:// mirror URL, or skip the replay with --no-verify",
        )
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None and not address.is_loopback:
        raise UsageError(
            f"{shown_line(mirror_url)}: verification can serve the mirror under a host name or a loopback address, "
            f"not {host}",
            tip="name the mirror by host name (its DNS name inside your network)",
        )
    with tempfile.TemporaryDirectory(prefix="dify-repack-ns-") as temp:
        hosts = Path(temp) / "hosts"
        hosts.write_text(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n127.0.0.1 {host}\n", encoding="utf-8")
        argv = [
            "unshare",
            "-n",
            "-m",
            "--propagation",
            "private",
            "--",
            sys.executable,
            "-m",
            "dify_repack.mirror_serve",
            "setup",
            str(hosts),
            *server,
        ]
        # A long-lived child in its own registered process group, killed as a group when verification ends.
        process = spawn(argv, stdout=subprocess.DEVNULL)
        # The working directory must be entered inside the namespace: a directory kept open across the switch
        # belongs to the old mount table, and renames between the two fail (EXDEV). So the path goes as text.
        enter = f'exec nsenter -t {process.pid} -n -m -- sh -c \'cd "$0" && exec "$@"\' "$(pwd)" "$@"'
        prefix = ["sh", "-c", enter, "sh"]
        try:
            _wait_ready(process, prefix, port)
            yield prefix
        finally:
            kill_group(process)
            process.communicate()


def _wait_ready(process: subprocess.Popen[bytes], prefix: list[str], port: int) -> None:
    probe = [sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}), 1).close()"]
    deadline = time.monotonic() + READY_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            assert process.stderr is not None
            error = process.stderr.read().decode(errors="replace").strip().splitlines()
            raise EnvironmentProblem(
                f"the mirror could not be served inside a network namespace: {error[-1] if error else 'it exited'}",
                tip="this needs root (unshare -n -m, nsenter) on Linux",
            )
        if run([*prefix, *probe], timeout=10).returncode == 0:
            return
        time.sleep(0.2)
    raise EnvironmentProblem(f"the mirror server did not listen on port {port} within {READY_TIMEOUT:.0f} s")


def _loopback_up() -> None:
    """``ip link set lo up`` without needing iproute2: SIOCGIFFLAGS / SIOCSIFFLAGS on a socket."""
    siocgifflags, siocsifflags, iff_up = 0x8913, 0x8914, 0x1
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        request = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(sock, siocgifflags, request))[1]
        fcntl.ioctl(sock, siocsifflags, struct.pack("16sH14x", b"lo", flags | iff_up))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dify_repack.mirror_serve")
    commands = parser.add_subparsers(dest="command", required=True)
    setup = commands.add_parser("setup", help="inside a new namespace: loopback up, hosts file, then exec SERVER")
    setup.add_argument("hosts", type=Path)
    setup.add_argument("server", nargs=argparse.REMAINDER)
    serve = commands.add_parser("serve", help="serve a wheelhouse at the mirror URL's port on 127.0.0.1")
    serve.add_argument("wheelhouse", type=Path)
    serve.add_argument("mirror_url")
    args = parser.parse_args(argv)
    if args.command == "setup":
        _loopback_up()
        mounted = run(["mount", "--bind", str(args.hosts), "/etc/hosts"], timeout=30)
        if mounted.returncode != 0:
            sys.stderr.write(mounted.output + "\n")  # the parent reads it when this process ends
            return mounted.returncode
        os.execvp(args.server[0], args.server)
    _, port, _ = mirror_address(args.mirror_url)
    server = make_server(args.wheelhouse / SIMPLE_DIR, args.wheelhouse / FILES_DIR, args.mirror_url, "127.0.0.1", port)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())

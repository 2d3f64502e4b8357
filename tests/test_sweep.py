"""A hostile-input and fault sweep of the CLI as a user runs it: every case, one property.

Each case is a command line built around one bad input (a source, a package, a plugin folder, a dependency
file, a key, an option value, an environment variable, or a local server that misbehaves). It runs twice: as
``dify-repack`` in a subprocess with a scrubbed environment, bounded in time and memory, and in-process through
``cli.main``. Either way the run must end with the documented exit code (never 1), no traceback, one
``error:`` line (and maybe a ``tip:``) naming the input as the user gave it (not a temp path), no secret, no
package in ``-o``, no ``.part`` file in the cache, an empty TMPDIR and nothing written anywhere else.

Nothing leaves the machine: every proxy variable points at a closed port on 127.0.0.1 (so a name that would
need DNS fails at once), and the servers are on 127.0.0.1.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import resource
import stat
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlsplit

import pytest

from builders import LocalIndex, make_plugin, make_wheel, manifest_yaml, serve_index
from dify_repack.cli import main
from dify_repack.http import download, make_client
from dify_repack.signing import generate_keypair
from dify_repack.wheelhouse import Incoming, add_wheels
from fakeweb import FakeWeb, Reply, serve
from hostile import DEFLATED, MIB, Entry, build_zip, plugin_entries

SECRET = "s3cr3t-sweep-token"
CLOSED = "http://127.0.0.1:9"  # the discard port: nothing listens there
DOCUMENTED = {0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 130, 143}
EXE = Path(sys.executable).with_name("dify-repack")
MEMORY_LIMIT = 3 * 1024**3  # address space of a subprocess run; a blow-up ends as MemoryError (exit 1)
FILE_LIMIT = 256 * 1024**2  # no file a run writes here may grow larger: a bomb or a huge copy ends with SIGXFSZ
TIME_LIMIT = 90.0
SCRUBBED_NAMES = ("DIFY_REPACK_CACHE_DIR", "DIFY_MARKETPLACE_URL", "GITHUB_TOKEN", "GITHUB_URL", "NETRC")
PROXY_NAMES = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


@dataclass
class World:
    """Where a case builds its inputs (``inputs``) and where the command may write (``out``, ``cache``)."""

    root: Path
    index: LocalIndex
    web: FakeWeb
    keys: tuple[Path, Path]
    env: dict[str, str | None] = field(default_factory=dict)

    @property
    def inputs(self) -> Path:
        return self.root / "in"

    @property
    def out(self) -> Path:
        return self.root / "out"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    @property
    def tmp(self) -> Path:
        return self.root / "tmp"

    @property
    def cwd(self) -> Path:
        return self.root / "cwd"

    def file(self, name: str, data: bytes | str) -> Path:
        path = self.inputs / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def package(self, name: str = "plugin.difypkg", entries: list[Entry] | None = None, comment: bytes = b"") -> Path:
        self.inputs.mkdir(parents=True, exist_ok=True)
        return build_zip(self.inputs / name, plugin_entries() if entries is None else entries, comment=comment)

    def package_with(self, **files: bytes) -> Path:
        return self.package(entries=plugin_entries(**files))

    def plugin(self, files: dict[str, str | None] | None = None, name: str = "plugin") -> Path:
        return make_plugin(self.inputs / name, {"requirements.txt": "dify_plugin==0.7.4\n", **(files or {})})

    def pack(self, *args: str | Path, index: str | None = None) -> list[str | Path]:
        """``pack ARGS`` writing only to out/ and cache/, without the replay; the index is closed unless given."""
        return [
            "pack", *args, "--no-verify", "-o", self.out, "--cache-dir", self.cache,
            "--index-url", index or f"{CLOSED}/simple",
        ]  # fmt: skip

    def url(self, path: str) -> str:
        return self.web.url + path


Argv = Callable[[World], list[str | Path]]


@dataclass(frozen=True)
class Case:
    argv: Argv
    code: int
    named: Callable[[World], str] | str | None = None  # what the error line must name; default: the 2nd word
    env: Callable[[World], dict[str, str | None]] | None = None
    in_process: bool = True  # False for cases that block in a system call, bounded only in a subprocess


def _zip_bytes(files: dict[str, bytes]) -> bytes:
    return _entries_bytes([Entry(name, data, method=DEFLATED) for name, data in files.items()])


def _entries_bytes(entries: list[Entry]) -> bytes:
    path = Path(tempfile.mkstemp(suffix=".zip")[1])
    try:
        return build_zip(path, entries).read_bytes()
    finally:
        path.unlink()


def _valid_package_bytes() -> bytes:
    path = Path(tempfile.mkstemp(suffix=".difypkg")[1])
    try:
        return build_zip(path, plugin_entries()).read_bytes()
    finally:
        path.unlink()


def _served(w: World, path: str, *replies: Reply) -> str:
    w.web.route(path, *replies)
    return w.url(path)


@functools.cache
def _gzip_bomb() -> bytes:
    """1 GiB of zeros as one gzip member of about 1 MiB: what a client that decodes Content-Encoding inflates."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    chunk = b"\0" * (16 * 1024 * 1024)
    return b"".join(compressor.compress(chunk) for _ in range(64)) + compressor.flush()


def _fifo(w: World, name: str) -> Path:
    path = w.inputs / name
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(path)
    return path


def _hostile_index(w: World, href: str) -> str:
    """An index whose page for ``evilpkg`` holds one link ``href``; the other pages are the shared index's."""
    root = w.root / "evil-index"
    page = root / "simple" / "evilpkg"
    page.mkdir(parents=True)
    (page / "index.html").write_text(f'<html><body><a href="{href}">evilpkg-1.0-py3-none-any.whl</a></body></html>')
    return str(root)


MANIFEST = manifest_yaml()


def _manifest(old: str, new: str) -> bytes:
    assert old in MANIFEST
    return MANIFEST.replace(old, new, 1).encode()


# --- sources as typed on the command line ------------------------------------------------------------------

SOURCES: dict[str, Case] = {
    "empty-string": Case(lambda w: w.pack(""), 2, named="SOURCE"),
    "only-spaces": Case(lambda w: w.pack("   "), 2, named="SOURCE"),
    "ftp-scheme": Case(lambda w: w.pack("ftp://127.0.0.1/x.difypkg"), 2),
    "file-scheme": Case(lambda w: w.pack("file:///etc/passwd"), 2),
    "javascript-scheme": Case(lambda w: w.pack("javascript:alert(1)"), 2),
    "url-without-host": Case(lambda w: w.pack("http://"), 2),
    "url-port-out-of-range": Case(lambda w: w.pack("http://127.0.0.1:99999/x.difypkg"), 2),
    "url-port-not-a-number": Case(lambda w: w.pack("http://127.0.0.1:abc/x.difypkg"), 2),
    "url-broken-ipv6": Case(lambda w: w.pack("http://[::1/x.difypkg"), 2),
    "url-space-in-host": Case(lambda w: w.pack("http://exa mple.invalid/x.difypkg"), 6),
    "url-ends-in-slash": Case(lambda w: w.pack(f"{CLOSED}/plugins/"), 2),
    "url-encoded-nul-name": Case(lambda w: w.pack(f"{CLOSED}/a%00b.difypkg"), 2),
    "url-encoded-dotdot-name": Case(lambda w: w.pack(f"{CLOSED}/%2e%2e"), 2),
    "url-encoded-slashes-name": Case(lambda w: w.pack(f"{CLOSED}/..%2F..%2Fescape.difypkg"), 6),
    "url-login-in-clear": Case(
        lambda w: w.pack(f"http://user:{SECRET}@127.0.0.1:9/x.difypkg"), 6, named="user:****@127.0.0.1:9"
    ),
    "url-token-as-user": Case(lambda w: w.pack(f"http://{SECRET}@127.0.0.1:9/x.difypkg"), 6, named="****@127.0.0.1"),
    "url-idn-host": Case(lambda w: w.pack("https://bücher.invalid/x.difypkg"), 6),
    "url-punycode-host": Case(lambda w: w.pack("https://xn--bcher-kva.invalid/x.difypkg"), 6),
    "url-closed-port": Case(lambda w: w.pack(f"{CLOSED}/x.difypkg"), 6),
    "url-name-too-long": Case(
        lambda w: w.pack(_served(w, "/" + "a" * 300 + ".difypkg", Reply(body=_valid_package_bytes()))),
        6,
        named="127.0.0.1:9",
    ),
    "scheme-less-login": Case(lambda w: w.pack(f"user:{SECRET}@example.invalid/x.difypkg"), 2, named="user:****@"),
    "source-name-too-long": Case(lambda w: w.pack("a" * 5000), 2, named="aaaa"),
    "github-without-asset": Case(lambda w: w.pack("github:owner/repo@v1"), 2),
    "github-owner-traversal": Case(lambda w: w.pack("github:../../x@v1/a.difypkg"), 2),
    "github-tag-traversal": Case(
        lambda w: w.pack("github:o/r@../../../../x/a.difypkg"), 2, env=lambda w: {"GITHUB_URL": w.web.url}
    ),
    "github-url-not-http": Case(
        lambda w: w.pack("github:o/r@v1/a.difypkg"), 2, named="GITHUB_URL", env=lambda w: {"GITHUB_URL": "ftp://x"}
    ),
    "github-token-never-shown": Case(
        lambda w: w.pack("github:o/r@v1/a.difypkg"),
        6,
        named="a.difypkg",
        env=lambda w: {"GITHUB_URL": w.web.url, "GITHUB_TOKEN": SECRET},
    ),
    "marketplace-short-checksum": Case(lambda w: w.pack("org/name:1.0.0@abc123"), 2),
    "marketplace-upper-case": Case(lambda w: w.pack("Org/Name:1.0.0"), 2),
    "marketplace-two-part-version": Case(lambda w: w.pack("org/name:1.0"), 2),
    "marketplace-url-not-http": Case(
        lambda w: w.pack("org/name:1.0.0", "--marketplace-url", "ftp://market.invalid"), 2, named="ftp://"
    ),
    "marketplace-env-not-http": Case(
        lambda w: w.pack("org/name:1.0.0"),
        2,
        named="DIFY_MARKETPLACE_URL",
        env=lambda w: {"DIFY_MARKETPLACE_URL": "market.invalid"},
    ),
    "marketplace-login-in-url": Case(
        lambda w: w.pack("org/name:1.0.0", "--marketplace-url", f"http://u:{SECRET}@127.0.0.1:9"), 6, named="org/name"
    ),
    "marketplace-404": Case(lambda w: w.pack("org/name:1.0.0", "--marketplace-url", w.web.url), 6, named="org/name"),
    "marketplace-latest-garbage-json": Case(
        lambda w: w.pack("org/name", "--marketplace-url", _market(w, b"{")), 6, named="org/name"
    ),
    "marketplace-latest-version-traversal": Case(
        lambda w: w.pack(
            "org/name", "--marketplace-url", _market(w, b'{"data":{"plugin":{"latest_version":"../../x"}}}')
        ),
        6,
        named="org/name",
    ),
    "marketplace-latest-deeply-nested-json": Case(
        lambda w: w.pack("org/name", "--marketplace-url", _market(w, b"[" * 1_000_000)), 6, named="org/name"
    ),
    "marketplace-latest-over-4-mib": Case(
        lambda w: w.pack("org/name", "--marketplace-url", _market(w, b'{"data": "' + b"x" * (10 * MIB) + b'"}')),
        6,
        named="org/name",
    ),
    "marketplace-latest-version-control-characters": Case(
        lambda w: w.pack(
            "org/name", "--marketplace-url", _market(w, b'{"data":{"plugin":{"latest_version":"1.0.0\\u001b[2J\\r"}}}')
        ),
        6,
        named="\\x1b[2J\\r",
    ),
    "marketplace-latest-version-huge": Case(
        lambda w: w.pack(
            "org/name", "--marketplace-url", _market(w, b'{"data":{"plugin":{"latest_version":"' + b"9" * MIB + b'"}}}')
        ),
        6,
        named="org/name",
    ),
    "marketplace-download-redirect-loop": Case(
        lambda w: w.pack(
            "org/name:1.0.0",
            "--marketplace-url",
            _served(
                w, "/api/v1/plugins/org/name/1.0.0/download", Reply(302, headers={"Location": "download"})
            ).removesuffix("/api/v1/plugins/org/name/1.0.0/download"),
        ),
        6,
        named="too many redirects",
    ),
    "github-asset-redirect-to-file": Case(
        lambda w: w.pack("github:o/r@v1/a.difypkg"),
        6,
        named="a.difypkg",
        env=lambda w: {
            "GITHUB_URL": _served(
                w, "/o/r/releases/download/v1/a.difypkg", Reply(302, headers={"Location": "file:///etc/passwd"})
            ).removesuffix("/o/r/releases/download/v1/a.difypkg")
        },
    ),
    "marketplace-latest-gzip-bomb": Case(
        lambda w: w.pack("org/name", "--marketplace-url", _market(w, _gzip_bomb(), {"Content-Encoding": "gzip"})),
        6,
        named="org/name",
    ),
}


def _market(w: World, body: bytes, headers: dict[str, str] | None = None) -> str:
    """A Marketplace whose plugin document for org/name is ``body``."""
    _served(w, "/api/v1/plugins/org/name", Reply(body=body, content_type="application/json", headers=headers or {}))
    return w.web.url


# --- misbehaving servers -----------------------------------------------------------------------------------

PACKAGE = _valid_package_bytes()


def _download(reply: Reply, path: str = "/p.difypkg") -> Argv:
    return lambda w: w.pack(_served(w, path, reply))


SERVERS: dict[str, Case] = {
    "html-instead-of-zip": Case(_download(Reply(body=b"<html>login</html>", content_type="text/html")), 6),
    "json-error-with-200": Case(_download(Reply(body=b'{"error": "rate"}', content_type="application/json")), 6),
    "empty-body": Case(_download(Reply(body=b"")), 6),
    "content-length-too-long": Case(_download(Reply(body=PACKAGE, length=len(PACKAGE) + 5000)), 6),
    "content-length-too-short": Case(_download(Reply(body=PACKAGE, length=len(PACKAGE) // 2)), 3),
    "zip-but-not-a-plugin": Case(_download(Reply(body=_zip_bytes({"readme.txt": b"hi"}))), 3),
    "redirect-loop": Case(_download(Reply(302, headers={"Location": "/p.difypkg"})), 6),
    "redirect-to-file-scheme": Case(_download(Reply(302, headers={"Location": "file:///etc/passwd"})), 6),
    "redirect-to-javascript": Case(_download(Reply(302, headers={"Location": "javascript:alert(1)"})), 6),
    "redirect-to-closed-port": Case(_download(Reply(302, headers={"Location": f"{CLOSED}/p.difypkg"})), 6),
    "redirect-without-location": Case(_download(Reply(302)), 6),
    "server-error-every-time": Case(_download(Reply(500)), 6),
    "unauthorized": Case(_download(Reply(401)), 6),
    "huge-header": Case(_download(Reply(body=PACKAGE, headers={"X-Junk": "a" * 300_000})), 6),
    "gzip-bomb": Case(_download(Reply(body=_gzip_bomb(), headers={"Content-Encoding": "gzip"})), 6),
    "broken-gzip-encoding": Case(_download(Reply(body=b"not gzip", headers={"Content-Encoding": "gzip"})), 6),
}

# --- batch source lists (-r) -------------------------------------------------------------------------------

LISTS: dict[str, Case] = {
    "list-empty": Case(lambda w: w.pack("-r", w.file("list.txt", "")), 2, named="list.txt"),
    "list-only-comments": Case(lambda w: w.pack("-r", w.file("list.txt", "# a\n\n   # b\n")), 2, named="list.txt"),
    "list-not-utf8": Case(lambda w: w.pack("-r", w.file("list.txt", b"\xff\xfe\x00x\n")), 2, named="list.txt"),
    "list-missing": Case(lambda w: w.pack("-r", w.inputs / "missing.txt"), 2, named="missing.txt"),
    "list-is-a-folder": Case(lambda w: w.pack("-r", w.plugin()), 2, named="plugin"),
    "list-bad-line-named": Case(
        lambda w: w.pack("-r", w.file("list.txt", "# ok\n\nftp://x/y.difypkg\n")), 2, named="list.txt:3"
    ),
    "list-line-with-login": Case(
        lambda w: w.pack("-r", w.file("list.txt", f"ftp://user:{SECRET}@x/y.difypkg\n")), 2, named="list.txt:1"
    ),
    "list-names-itself": Case(lambda w: w.pack("-r", w.file("list.txt", "list.txt\n")), 3, named="list.txt"),
    "list-is-dev-zero": Case(lambda w: w.pack("-r", "/dev/zero"), 2, named="/dev/zero", in_process=False),
    "list-is-a-fifo": Case(lambda w: w.pack("-r", _fifo(w, "list.fifo")), 2, named="list.fifo", in_process=False),
    "list-huge-line": Case(lambda w: w.pack("-r", w.file("list.txt", "a" * 5_000_000 + "\n")), 2, named="list.txt"),
}

# --- package files -----------------------------------------------------------------------------------------

PACKAGES: dict[str, Case] = {
    "package-is-a-fifo": Case(lambda w: w.pack(_fifo(w, "p.difypkg")), 2, named="p.difypkg", in_process=False),
    "inspect-a-fifo": Case(lambda w: ["inspect", _fifo(w, "p.difypkg")], 3, named="p.difypkg", in_process=False),
    "inspect-dev-zero": Case(lambda w: ["inspect", "/dev/zero"], 3, in_process=False),
    "inspect-a-folder": Case(lambda w: ["inspect", w.plugin()], 2, named="plugin"),
    "no-manifest": Case(lambda w: w.pack(w.package(entries=plugin_entries()[1:])), 3),
    "manifest-is-a-folder-entry": Case(
        lambda w: w.pack(w.package(entries=[*plugin_entries()[1:], Entry("manifest.yaml/x", b"a: 1\n")])), 3
    ),
    "manifest-not-utf8": Case(lambda w: w.pack(w.package_with(manifest_yaml=b"version: \xff\xfe\n")), 3),
    "manifest-python-tag": Case(
        lambda w: w.pack(w.package_with(manifest_yaml=b"!!python/object/apply:os.system ['id']\n")), 3
    ),
    "manifest-version-float": Case(lambda w: w.pack(w.package_with(manifest_yaml=_manifest("0.1.0", "1.0"))), 3),
    "manifest-arch-unknown": Case(
        lambda w: w.pack(w.package_with(manifest_yaml=_manifest("    - amd64", "    - mips"))), 3
    ),
    "manifest-arch-not-a-list": Case(
        lambda w: w.pack(w.package_with(manifest_yaml=_manifest("  arch:\n    - amd64", "  arch: 7"))), 3
    ),
    "manifest-language-node": Case(
        lambda w: w.pack(w.package_with(manifest_yaml=_manifest("language: python", "language: node"))), 3
    ),
    "manifest-meta-missing": Case(
        lambda w: w.pack(w.package_with(manifest_yaml=MANIFEST.split("meta:")[0].encode())), 3
    ),
    "manifest-runner-version-garbage": Case(
        lambda w: w.pack(w.package_with(manifest_yaml=_manifest('version: "3.12"', "version: [3]"))), 6, "127.0.0.1:9"
    ),
    "manifest-nul-bytes": Case(lambda w: w.pack(w.package_with(manifest_yaml=b"version: 0.1.0\x00\n")), 3),
    "signature-comment-garbage": Case(
        lambda w: ["verify-signature", w.package(comment=b'{"signature": "!!!", "time": "x"}'), "--key", w.keys[1]], 8
    ),
    "signature-comment-not-json": Case(
        lambda w: ["verify-signature", w.package(comment=b"\xff" * 200), "--key", w.keys[1]], 8
    ),
    "signature-time-huge": Case(
        lambda w: ["verify-signature", w.package(comment=b'{"signature": "AAAA", "time": 1e308}'), "--key", w.keys[1]],
        8,
    ),
    "signature-comment-deeply-nested": Case(
        lambda w: ["verify-signature", w.package(comment=b"[" * 60_000), "--key", w.keys[1]], 8
    ),
    # The licenses of the wheels a package ships are read for the SBOM; a broken one declares none.
    "inspect-wheel-metadata-corrupt-deflate": Case(
        lambda w: [
            "inspect",
            w.package(entries=[*plugin_entries(), Entry(f"wheels/{EVIL_WHEEL}", _corrupt_metadata())]),
            "--sbom",
            w.out / "sbom.json",
        ],
        0,
    ),
    "inspect-wheel-not-a-zip": Case(
        lambda w: [
            "inspect",
            w.package(entries=[*plugin_entries(), Entry(f"wheels/{EVIL_WHEEL}", b"PK\x03\x04 then nothing")]),
            "--report",
            w.out / "report.html",
        ],
        0,
    ),
    "verification-json-garbage": Case(
        lambda w: [
            "verify-signature",
            w.package(entries=[*plugin_entries(), Entry(".verification.dify.json", b"[[[")]),
            "--key",
            w.keys[1],
        ],
        8,
    ),
    "prepended-junk": Case(
        lambda w: w.pack(w.file("p.difypkg", b"#!/bin/sh\nexit 0\n" + PACKAGE)), 6, named="127.0.0.1:9"
    ),
}


# --- plugin folders ----------------------------------------------------------------------------------------


def _odd_name(w: World, name: bytes) -> Path:
    plugin = w.plugin()
    # Bytes, not str: a name that is not UTF-8 cannot be spelled as a Path.
    fd = os.open(os.fsencode(plugin) + b"/" + name, os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"x = 1\n")
    os.close(fd)
    return plugin


def _sparse(w: World, size: int) -> Path:
    plugin = w.plugin()
    with (plugin / "huge.bin").open("wb") as handle:
        handle.truncate(size)
    return plugin


def _manifest_link(w: World) -> Path:
    plugin = w.plugin()
    (plugin / "manifest.yaml").unlink()
    (plugin / "manifest.yaml").symlink_to("/etc/passwd")
    return plugin


def _manifest_folder(w: World) -> Path:
    plugin = w.plugin()
    (plugin / "manifest.yaml").unlink()
    (plugin / "manifest.yaml").mkdir()
    return plugin


FOLDERS: dict[str, Case] = {
    "folder-without-manifest": Case(lambda w: w.pack(w.plugin({"manifest.yaml": None})), 3, named="plugin"),
    "folder-manifest-links-out": Case(lambda w: w.pack(_manifest_link(w)), 3, named="manifest.yaml"),
    "folder-manifest-is-a-folder": Case(lambda w: w.pack(_manifest_folder(w)), 3, named="plugin"),
    "folder-name-with-newline": Case(lambda w: w.pack(_odd_name(w, b"evil\nname.py"), index=w.index.url), 0),
    "folder-name-with-backslash": Case(
        lambda w: w.pack(_odd_name(w, b"..\\evil.py"), index=w.index.url), 3, named="plugin"
    ),
    "folder-name-not-utf8": Case(lambda w: w.pack(_odd_name(w, b"\xff\xfe.py"), index=w.index.url), 3, named="plugin"),
    "folder-sparse-9-gib": Case(lambda w: w.pack(_sparse(w, 9 * 1024**3)), 3, named="huge.bin"),
    "folder-difyignore-bad-pattern": Case(
        lambda w: w.pack(w.plugin({".difyignore": "# ok\n!\n"})), 3, named=".difyignore:2"
    ),
    "package-difyignore-bad-pattern": Case(
        lambda w: w.pack(w.package_with(**{".difyignore": b"!\n[\n"}), index=w.index.url), 0
    ),
    "folder-difyignore-drops-manifest": Case(
        lambda w: w.pack(w.plugin({".difyignore": "*\n"})), 3, named="manifest.yaml"
    ),
}

# --- dependency files (resolution against the local index) ------------------------------------------------

PYPROJECT = (
    '[project]\nname = "demo"\nversion = "0.1.0"\nrequires-python = ">=3.12"\ndependencies = ["dify_plugin==0.7.4"]\n'
)


def _deps(files: dict[str, str | None], code: int, named: str) -> Case:
    return Case(lambda w: w.pack(w.plugin(files), index=w.index.url), code, named=named)


DEPS: dict[str, Case] = {
    "requirements-url-to-local-file": _deps({"requirements.txt": "evil @ file:///etc/passwd\n"}, 4, "requirements.txt"),
    "requirements-url-elsewhere": _deps(
        {"requirements.txt": "dify_plugin==0.7.4\nevil @ https://evil.invalid/evil-1.0-py3-none-any.whl\n"},
        4,
        "evil",
    ),
    "requirements-url-huge-with-login": _deps(
        {"requirements.txt": f"dify_plugin==0.7.4\nevil @ https://u:{SECRET}@evil.invalid/{'a' * 5000}.whl\n"},
        4,
        "u:****@evil.invalid",
    ),
    "requirements-huge": _deps(
        {"requirements.txt": "dify_plugin==0.7.4\n" + "# x\n" * 1_500_000}, 4, "requirements.txt"
    ),
    "requirements-editable": _deps({"requirements.txt": "-e .\n"}, 4, "requirements.txt"),
    "requirements-is-a-folder": _deps({"requirements.txt/x": "a\n", "requirements.txt": None}, 4, "requirements.txt"),
    "requirements-empty-pin": _deps({"requirements.txt": "dify_plugin==\n"}, 4, "requirements.txt"),
    "requirements-unknown-package": _deps(
        {"requirements.txt": "dify_plugin==0.7.4\nno-such-thing\n"}, 4, "no-such-thing"
    ),
    "requirements-index-option-inside": _deps(
        {"requirements.txt": f"--index-url http://user:{SECRET}@127.0.0.1:9/simple\ndify_plugin==0.7.4\nnope\n"},
        4,
        "nope",
    ),
    "python-version-garbage": _deps({".python-version": "../../../etc\x00\n"}, 0, ""),
    "python-version-huge": _deps({".python-version": "3" * 20_000_000}, 0, ""),
    "pyproject-requires-python-garbage": _deps(
        {"pyproject.toml": '[project]\nname = "x"\nversion = "1"\nrequires-python = ">=banana"\ndependencies = []\n'},
        4,
        "pyproject.toml",
    ),
    "pyproject-huge-group-name": _deps(
        {
            "pyproject.toml": '[project]\nname = "x"\nversion = "1"\ndependencies = ["helper"]\n'
            f'[dependency-groups]\n"{"g" * 5000}" = ["dify_plugin==banana"]\n'
        },
        4,
        "[dependency-groups]",
    ),
    "pyproject-dependencies-not-strings": _deps(
        {"pyproject.toml": '[project]\nname = "x"\nversion = "1"\ndependencies = [1, {a = 2}]\n'}, 4, "pyproject.toml"
    ),
    "uv-lock-binary": _deps({"uv.lock": "\x00\x01\x02"}, 0, ""),
    # uv settings naming this machine: left out of the package, never read by pack's own uv lock.
    "uv-toml-names-this-machine": _deps(
        {"pyproject.toml": PYPROJECT, "uv.toml": 'find-links = ["/root"]\n[pip]\ntarget = "/tmp/x"\nsystem = true\n'},
        0,
        "",
    ),
    "optional-dependency-file-url": _deps(
        {"pyproject.toml": PYPROJECT + '[project.optional-dependencies]\nx = ["evil @ file:///etc"]\n'}, 0, ""
    ),
    "requirements-find-links-root": _deps({"requirements.txt": "-f /root\ndify_plugin==0.7.4\n"}, 0, ""),
    "requirements-editable-host-path": _deps(
        {"requirements.txt": "dify_plugin==0.7.4\n-e /opt/src\n"}, 4, "requirements.txt:2"
    ),
    "requirements-path-outside": _deps(
        {"requirements.txt": "dify_plugin==0.7.4\n../../evil-1.0-py3-none-any.whl\n"}, 4, "requirements.txt:2"
    ),
}


def _verify_config(name: str, text: Callable[[World], str], named: str) -> Case:
    """``verify`` of a package whose ``name`` file leads out of it: refused before uv could act on it (the
    snapshot would catch a write beside the package)."""
    return Case(
        lambda w: ["verify", w.package_with(**{name: text(w).encode()}), "--cache-dir", w.cache], 4, named=named
    )


CONFIG: dict[str, Case] = {
    "verify-uv-pip-target-beside": _verify_config(
        "pyproject.toml", lambda w: f'{PYPROJECT}[tool.uv.pip]\ntarget = "{w.root}/victim"\n', "pyproject.toml:7:"
    ),
    "verify-uv-toml-system-python": _verify_config("uv.toml", lambda w: "[pip]\nsystem = true\n", "uv.toml:2:"),
    "verify-python-version-path": _verify_config(".python-version", lambda w: "/usr/bin/python3\n", ".python-version"),
    "verify-requirements-find-links": _verify_config(
        "requirements.txt", lambda w: "-f /root\ndify_plugin==0.7.4\n", "requirements.txt:1:"
    ),
    "verify-lock-registry-outside": _verify_config(
        "uv.lock",
        lambda w: 'version = 1\n[[package]]\nname = "helper"\nversion = "1"\nsource = { registry = "/srv" }\n',
        "uv.lock:5:",
    ),
}

# --- keys ----------------------------------------------------------------------------------------------------

PEM_VARIANTS: dict[str, bytes] = {
    "empty": b"",
    "garbage": b"not a key\n",
    "truncated-pem": b"-----BEGIN RSA PRIVATE KEY-----\nMIIB\n-----END RSA PRIVATE KEY-----\n",
    "certificate": b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    "binary": bytes(range(256)) * 10,
}


def _private_pkcs8(w: World, *, encrypted: bool = False, kind: str = "rsa") -> Path:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    key = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    algorithm = serialization.BestAvailableEncryption(SECRET.encode()) if encrypted else serialization.NoEncryption()
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, algorithm)
    path = w.file(f"{kind}.pem", data)
    path.chmod(0o600)
    return path


KEYS: dict[str, Case] = {
    **{
        f"sign-key-{name}": Case(
            lambda w, data=data: ["sign", w.package(), "--key", w.file("key.pem", data), "-o", w.out / "s.difypkg"],
            8,
            named="key.pem",
        )
        for name, data in PEM_VARIANTS.items()
    },
    **{
        f"verify-key-{name}": Case(
            lambda w, data=data: ["verify-signature", w.package(), "--key", w.file("key.pem", data)], 8, named="key.pem"
        )
        for name, data in PEM_VARIANTS.items()
    },
    "sign-key-encrypted": Case(
        lambda w: ["sign", w.package(), "--key", _private_pkcs8(w, encrypted=True), "-o", w.out / "s.difypkg"],
        8,
        named="rsa.pem",
    ),
    "sign-key-ec": Case(
        lambda w: ["sign", w.package(), "--key", _private_pkcs8(w, kind="ec"), "-o", w.out / "s.difypkg"], 8, "ec.pem"
    ),
    "sign-key-is-public": Case(
        lambda w: ["sign", w.package(), "--key", w.keys[1], "-o", w.out / "s.difypkg"], 8, named="public.pem"
    ),
    "verify-key-is-private": Case(lambda w: ["verify-signature", w.package(), "--key", w.keys[0]], 8, "private.pem"),
    "pack-sign-key-garbage": Case(
        lambda w: w.pack(w.package(), "--sign-key", w.file("key.pem", b"junk")), 8, named="key.pem"
    ),
    "inspect-key-garbage": Case(lambda w: ["inspect", w.package(), "--key", w.file("key.pem", b"junk")], 8, "key.pem"),
    "keygen-over-an-existing-key": Case(
        lambda w: ["keygen", w.keys[0].with_name("sweep"), "--bits", "2048"], 2, named="sweep.private.pem"
    ),
    "keygen-name-is-a-folder": Case(lambda w: ["keygen", w.plugin(), "--bits", "2048"], 2, named="plugin"),
    "keygen-bits-zero": Case(lambda w: ["keygen", w.out / "k", "--bits", "0"], 2, named="--bits"),
    "keygen-bits-negative": Case(lambda w: ["keygen", w.out / "k", "--bits", "-1"], 2, named="--bits"),
    "keygen-bits-text": Case(lambda w: ["keygen", w.out / "k", "--bits", "lots"], 2, named="--bits"),
    "keygen-in-proc": Case(lambda w: ["keygen", "/proc/k", "--bits", "2048"], 9, named="/proc"),
    "sign-output-in-dev-null": Case(
        lambda w: ["sign", w.package(), "--key", w.keys[0], "-o", "/dev/null/s.difypkg"], 9, named="/dev/null"
    ),
}

# --- option values -----------------------------------------------------------------------------------------

OPTIONS: dict[str, Case] = {
    "output-is-a-file": Case(lambda w: [*w.pack(w.package()), "-o", w.file("f", "x")], 2, named="f"),
    "output-under-a-file": Case(lambda w: [*w.pack(w.package()), "-o", w.file("f", "x") / "sub"], 9, named="f"),
    "output-in-proc": Case(lambda w: [*w.pack(w.package()), "-o", "/proc/self/nope"], 9, named="/proc/self/nope"),
    "cache-is-a-file": Case(lambda w: [*w.pack(w.package()), "--cache-dir", w.file("f", "x")], 2, named="f"),
    "cache-under-a-file": Case(lambda w: [*w.pack(w.package()), "--cache-dir", w.file("f", "x") / "sub"], 9, named="f"),
    "jobs-zero": Case(lambda w: w.pack(w.package(), "-j", "0"), 2, named="-j"),
    "jobs-huge": Case(lambda w: w.pack(w.package(), "-j", "99999999999999999999"), 2, named="-j"),
    "glibc-text": Case(lambda w: w.pack(w.package(), "--glibc", "banana"), 2, named="banana"),
    "glibc-huge": Case(lambda w: w.pack(w.package(), "--glibc", "2.99999999999999999999"), 2, named="--glibc"),
    "glibc-negative": Case(lambda w: w.pack(w.package(), "--glibc", "-2.28"), 2, named="-2.28"),
    "python-two-dots": Case(lambda w: w.pack(w.package(), "--python", "3.12.1"), 2, named="3.12.1"),
    "python-empty": Case(lambda w: w.pack(w.package(), "--python", ""), 2, named="--python"),
    "arch-mips": Case(lambda w: w.pack(w.package(), "--arch", "mips"), 2, named="mips"),
    "index-url-ftp": Case(lambda w: [*w.pack(w.package()), "--index-url", "ftp://x/simple"], 2, named="ftp://x"),
    "index-url-no-host": Case(lambda w: [*w.pack(w.package()), "--index-url", "https://"], 2, named="--index-url"),
    "index-url-login": Case(
        lambda w: [*w.pack(w.package()), "--index-url", f"http://u:{SECRET}@127.0.0.1:9/simple"],
        6,
        named="http://127.0.0.1:9/simple",
    ),
    "index-url-no-scheme-login": Case(
        lambda w: [*w.pack(w.package()), "--index-url", f"u:{SECRET}@nexus.invalid/simple"], 2, named="u:****@"
    ),
    "uv-version-traversal": Case(
        lambda w: ["verify", w.package(), "--cache-dir", w.cache, "--uv", "../../../etc"], 2, named="../../../etc"
    ),
    "uv-version-garbage": Case(
        lambda w: ["verify", w.package(), "--cache-dir", w.cache, "--uv", "banana"], 2, named="banana"
    ),
    "verify-profile-unknown": Case(lambda w: ["verify", w.package(), "--profile", "bogus"], 2, named="bogus"),
    "cache-clean-root": Case(lambda w: ["cache", "clean", "--cache-dir", "/"], 2, named="/"),
    "cache-clean-a-file": Case(lambda w: ["cache", "clean", "--cache-dir", w.file("f", "x")], 2, named="f"),
    "cache-info-missing": Case(lambda w: ["cache", "info", "--cache-dir", w.inputs / "nope"], 0, named=None),
}

# --- environment -------------------------------------------------------------------------------------------

ENVIRONMENT: dict[str, Case] = {
    "ssl-cert-file-garbage": Case(
        lambda w: w.pack(f"{CLOSED}/x.difypkg"),
        2,
        named="ca.pem",
        env=lambda w: {"SSL_CERT_FILE": str(w.file("ca.pem", "junk"))},
    ),
    "ssl-cert-file-missing": Case(
        lambda w: w.pack(f"{CLOSED}/x.difypkg"),
        2,
        named="nope.pem",
        env=lambda w: {"SSL_CERT_FILE": str(w.inputs / "nope.pem")},
    ),
    "ssl-cert-file-a-folder": Case(
        lambda w: w.pack(f"{CLOSED}/x.difypkg"),
        2,
        named="SSL_CERT_FILE",
        env=lambda w: {"SSL_CERT_FILE": str(w.plugin())},
    ),
    "requests-ca-bundle-binary": Case(
        lambda w: w.pack(f"{CLOSED}/x.difypkg"),
        2,
        named="ca.pem",
        env=lambda w: {"REQUESTS_CA_BUNDLE": str(w.file("ca.pem", bytes(range(256))))},
    ),
    "proxy-garbage": Case(
        lambda w: w.pack("https://example.invalid/x.difypkg"), 6, env=lambda w: {"HTTPS_PROXY": "::::"}
    ),
    "proxy-socks": Case(
        lambda w: w.pack("https://example.invalid/x.difypkg"), 6, env=lambda w: {"HTTPS_PROXY": "socks5://127.0.0.1:9"}
    ),
    "proxy-with-login": Case(
        lambda w: w.pack("https://example.invalid/x.difypkg"),
        6,
        env=lambda w: {"HTTPS_PROXY": f"http://u:{SECRET}@127.0.0.1:9"},
    ),
    "netrc-garbage": Case(
        lambda w: w.pack(w.package()),
        6,
        named="127.0.0.1:9",
        env=lambda w: {"NETRC": str(w.file("netrc", 'machine\n\x00 login password "unterminated\n'))},
    ),
    "netrc-is-a-folder": Case(
        lambda w: w.pack(w.package()), 6, named="127.0.0.1:9", env=lambda w: {"NETRC": str(w.plugin())}
    ),
    "cache-env-is-a-file": Case(
        lambda w: ["pack", w.package(), "--no-verify", "-o", w.out, "--index-url", f"{CLOSED}/simple"],
        2,
        named="f",
        env=lambda w: {"DIFY_REPACK_CACHE_DIR": str(w.file("f", "x"))},
    ),
    "xdg-cache-home-is-a-file": Case(
        lambda w: ["pack", w.package(), "--no-verify", "-o", w.out, "--index-url", f"{CLOSED}/simple"],
        9,
        named="x",
        env=lambda w: {"DIFY_REPACK_CACHE_DIR": None, "XDG_CACHE_HOME": str(w.file("x", "x"))},
    ),
    "index-url-env-no-scheme": Case(
        lambda w: ["pack", w.package(), "--no-verify", "-o", w.out, "--cache-dir", w.cache],
        2,
        named="UV_INDEX_URL",
        env=lambda w: {"UV_INDEX_URL": "nexus.invalid/simple"},
    ),
}

# --- a hostile index -------------------------------------------------------------------------------------


def _evil_index(href: str, code: int, named: str = "evilpkg") -> Case:
    def argv(w: World) -> list[str | Path]:
        root = Path(_hostile_index(w, href))
        w.env["_EVIL_INDEX_ROOT"] = str(root)
        return w.pack(w.plugin({"requirements.txt": "dify_plugin==0.7.4\nevilpkg\n"}), index="EVIL")

    return Case(argv, code, named=named)


INDEX: dict[str, Case] = {
    "index-href-traversal": _evil_index("../../../../etc/passwd", 4),
    "index-href-javascript": _evil_index("javascript:alert(1)", 4),
    "index-href-file-scheme": _evil_index("file:///etc/evilpkg-1.0-py3-none-any.whl", 4),
    "index-href-closed-port": _evil_index(f"{CLOSED}/evilpkg-1.0-py3-none-any.whl", 6, "127.0.0.1"),
    "index-href-wrong-sha256": _evil_index("/files/helper-1.0.0-py3-none-any.whl#sha256=" + "0" * 64, 4),
}

# --- an index that serves hostile files ---------------------------------------------------------------------
# The page gives each wheel's METADATA beside it (PEP 658, as large indexes do): uv resolves from that alone, so
# the wheel itself is fetched, checked and read only by dify-repack.

EVIL_WHEEL = "evilpkg-1.0-py3-none-any.whl"
EVIL_METADATA = b"Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n"
EVIL_DIST = "evilpkg-1.0.dist-info"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@functools.cache
def _good_wheel() -> bytes:
    with tempfile.TemporaryDirectory() as temp:
        return make_wheel(Path(temp), "evilpkg", "1.0").read_bytes()


def _wheel_with(*entries: Entry) -> bytes:
    """A wheel of evilpkg 1.0 whose other entries are ``entries`` (a METADATA among them replaces the real one)."""
    names = {entry.name for entry in entries}
    base = [Entry("evilpkg/__init__.py", b"VERSION = '1.0'\n", method=DEFLATED)]
    base += [Entry(f"{EVIL_DIST}/{name}", data, method=DEFLATED) for name, data in (
        ("METADATA", EVIL_METADATA), ("WHEEL", b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"),
    ) if f"{EVIL_DIST}/{name}" not in names]  # fmt: skip
    return _entries_bytes([*base, *entries])


def _served_wheel(
    *replies: Reply | Callable[[], Reply],
    vouch: bytes | Callable[[], bytes] | None = _good_wheel,
    name: str = EVIL_WHEEL,
    href: str | None = None,
    json_api: bool = False,
    junk_links: int = 0,
) -> Argv:
    """``pack`` of a plugin needing evilpkg, whose wheel the fake web's index serves as ``replies`` in turn (the
    last one repeats). The link carries the sha256 of ``vouch`` (none when None) and leads to ``href`` (default
    /w/NAME); the page is the JSON simple API with ``json_api``, and ``junk_links`` older versions precede it."""

    def argv(w: World) -> list[str | Path]:
        link = href or f"/w/{quote(name)}"
        vouched = vouch() if callable(vouch) else vouch
        hashes = {"sha256": _sha256(vouched)} if vouched is not None else {}
        fragment = f"#sha256={hashes['sha256']}" if hashes else ""
        if json_api:
            meta = {"sha256": _sha256(EVIL_METADATA)}
            files = [{"filename": name, "url": link, "hashes": hashes, "core-metadata": meta}]
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": "evilpkg", "files": files}).encode()
            page = Reply(body=body, content_type="application/vnd.pypi.simple.v1+json")
        else:
            junk = "".join(f'<a href="/j/evilpkg-0.0.{n}-py3-none-any.whl">x</a>\n' for n in range(junk_links))
            anchor = f'<a href="{link}{fragment}" data-core-metadata="sha256={_sha256(EVIL_METADATA)}">{name}</a>'
            page = Reply(body=(junk + anchor).encode(), content_type="text/html")
        w.web.route("/simple/evilpkg/", page)
        w.web.route(urlsplit(link).path + ".metadata", Reply(body=EVIL_METADATA))
        w.web.route(urlsplit(link).path, *(reply() if callable(reply) else reply for reply in replies))
        plugin = w.plugin({"requirements.txt": "dify_plugin==0.7.4\nevilpkg\n"})
        return [*w.pack(plugin, index=w.index.url), "--extra-index-url", f"{w.web.url}/simple"]

    return argv


def _wheel_reply(data: bytes | Callable[[], bytes], **kwargs: object) -> Callable[[], Reply]:
    return lambda: Reply(body=data() if callable(data) else data, **kwargs)  # type: ignore[arg-type]


def _corrupt_metadata() -> bytes:
    return _wheel_with(Entry(f"{EVIL_DIST}/METADATA", b"Name: x\n", method=DEFLATED, payload=b"\xff" * 16))


@functools.cache
def _foreign_wheel() -> bytes:
    """A wheel named evilpkg-1.0 whose only .dist-info is another project's."""
    with tempfile.TemporaryDirectory() as temp:
        return make_wheel(Path(temp), "requests", "2.0").read_bytes()


def _odd_metadata() -> bytes:
    return _wheel_with(Entry(f"{EVIL_DIST}/METADATA", EVIL_METADATA + b"License: MIT\x00\xff\xfe evil\n"))


@functools.cache
def _huge_metadata() -> bytes:
    return _wheel_with(Entry(f"{EVIL_DIST}/METADATA", EVIL_METADATA + b"X" * (100 * MIB), method=DEFLATED))


def _license_file_outside() -> bytes:
    return _wheel_with(Entry(f"{EVIL_DIST}/METADATA", EVIL_METADATA + b"License-File: ../../../../etc/passwd\n"))


@functools.cache
def _many_entries() -> bytes:
    return _wheel_with(*(Entry(f"evilpkg/m{n}.py", b"") for n in range(65_000)))


SERVED: dict[str, Case] = {
    "served-wheel-hash-mismatch": Case(
        _served_wheel(_wheel_reply(lambda: _wheel_with(Entry("evilpkg/evil.py", b"import os\n")))), 6, EVIL_WHEEL
    ),
    "served-wheel-content-length-short": Case(
        _served_wheel(lambda: Reply(body=_good_wheel(), length=len(_good_wheel()) - 100)), 6, EVIL_WHEEL
    ),
    "served-wheel-content-length-long": Case(
        _served_wheel(lambda: Reply(body=_good_wheel(), length=len(_good_wheel()) + 100)), 6, EVIL_WHEEL
    ),
    "served-wheel-gzip-encoded": Case(
        _served_wheel(lambda: Reply(body=zlib.compress(_good_wheel(), wbits=31), headers={"Content-Encoding": "gzip"})),
        6,
        EVIL_WHEEL,
    ),
    "served-wheel-html-page": Case(
        _served_wheel(Reply(body=b"<html>please log in</html>", content_type="text/html")), 6, EVIL_WHEEL
    ),
    # Without a sha256 on the link uv fetches the wheel to learn it: uv refuses the page while resolving.
    "served-wheel-html-page-no-hash": Case(
        _served_wheel(Reply(body=b"<html>please log in</html>", content_type="text/html"), vouch=None), 4, "evilpkg"
    ),
    "served-wheel-json-error-no-hash": Case(
        _served_wheel(Reply(body=b'{"error": "quota"}', content_type="application/json"), vouch=None), 4, "evilpkg"
    ),
    # A server that gives uv the wheel, then dify-repack an error page with status 200.
    "served-wheel-turns-into-a-page-no-hash": Case(
        _served_wheel(_wheel_reply(_good_wheel), Reply(body=b'{"error": "quota"}'), vouch=None), 6, EVIL_WHEEL
    ),
    "served-wheel-turns-into-another-no-hash": Case(
        _served_wheel(_wheel_reply(_good_wheel), _wheel_reply(_foreign_wheel), vouch=None), 4, EVIL_WHEEL
    ),
    "served-json-api-hash-mismatch": Case(
        _served_wheel(_wheel_reply(b"PK\x03\x04 another file"), json_api=True), 6, EVIL_WHEEL
    ),
    "served-page-with-100k-links": Case(_served_wheel(_wheel_reply(_good_wheel), junk_links=100_000), 0),
    "served-wheel-dist-info-of-another-project": Case(
        _served_wheel(_wheel_reply(_foreign_wheel), vouch=_foreign_wheel), 4, EVIL_WHEEL
    ),
    "served-wheel-metadata-nul-and-not-utf8": Case(_served_wheel(_wheel_reply(_odd_metadata), vouch=_odd_metadata), 0),
    "served-wheel-metadata-100-mib": Case(_served_wheel(_wheel_reply(_huge_metadata), vouch=_huge_metadata), 0),
    "served-wheel-license-file-outside": Case(
        _served_wheel(_wheel_reply(_license_file_outside), vouch=_license_file_outside), 0
    ),
    "served-wheel-65k-entries": Case(_served_wheel(_wheel_reply(_many_entries), vouch=_many_entries), 0),
    "served-wheel-redirect-to-file": Case(
        _served_wheel(Reply(302, headers={"Location": "file:///etc/passwd"})), 6, EVIL_WHEEL
    ),
    "served-wheel-redirect-loop": Case(
        _served_wheel(Reply(302, headers={"Location": f"/w/{EVIL_WHEEL}"})), 6, EVIL_WHEEL
    ),
    "served-wheel-of-another-project": Case(
        _served_wheel(_wheel_reply(_good_wheel), name="evil-1.0-py3-none-any.whl"), 4, "evilpkg"
    ),
    "served-wheel-name-with-encoded-slash": Case(
        _served_wheel(_wheel_reply(_good_wheel), href=f"/w/..%2F..%2F{EVIL_WHEEL}"), 4, "evilpkg"
    ),
    "served-wheel-name-very-long": Case(
        _served_wheel(_wheel_reply(_good_wheel), name=f"evilpkg-1.0+{'a' * 300}-py3-none-any.whl"), 4, "evilpkg"
    ),
    "served-wheel-not-a-zip-but-vouched": Case(
        _served_wheel(_wheel_reply(b"PK\x03\x04 but nothing after"), vouch=b"PK\x03\x04 but nothing after"),
        4,
        EVIL_WHEEL,
    ),
    "served-wheel-metadata-corrupt-deflate": Case(
        _served_wheel(_wheel_reply(_corrupt_metadata), vouch=_corrupt_metadata),
        4,
        EVIL_WHEEL,
    ),
}

# --- wheelhouses ----------------------------------------------------------------------------------------------


def _house(w: World, manifest: bytes | object | None = None, *, wheel: bool = False) -> Path:
    """A wheelhouse folder: with one real wheel added, or with ``manifest`` written as its wheelhouse.json."""
    house = w.inputs / "house"
    house.mkdir(parents=True, exist_ok=True)
    if wheel:
        made = make_wheel(w.root / "wheels", "helper", "1.0.0")
        add_wheels(house, "tester/demo:0.1.0", [Incoming(made)])
    if manifest is not None:
        data = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
        (house / "wheelhouse.json").write_bytes(data)
    return house


def _victim(w: World) -> Path:
    """A file beside the wheelhouse that a manifest naming ``../../victim.txt`` aims at."""
    victim = w.inputs / "victim.txt"
    victim.write_text("must survive\n")
    return victim


def _traversal_manifest(w: World) -> dict[str, object]:
    _victim(w)
    entry = {"filename": "../../victim.txt", "project": "x", "version": "1", "sha256": "0" * 64, "size": 1}
    return {"schema": 1, "files": {"../../victim.txt": entry}, "plugins": {"a/b:1.0.0": ["../../victim.txt"]}}


WHEELHOUSES: dict[str, Case] = {
    "wheelhouse-manifest-not-json": Case(lambda w: ["wheelhouse", "list", _house(w, b"{")], 3, "wheelhouse.json"),
    "wheelhouse-manifest-a-list": Case(lambda w: ["wheelhouse", "list", _house(w, [1, 2])], 3, "wheelhouse.json"),
    "wheelhouse-manifest-binary": Case(
        lambda w: ["wheelhouse", "check", _house(w, b"\xff\xfe{")], 3, "wheelhouse.json"
    ),
    "wheelhouse-not-a-wheelhouse": Case(lambda w: ["wheelhouse", "check", w.plugin()], 2, named="plugin"),
    "wheelhouse-is-a-file": Case(lambda w: ["wheelhouse", "list", w.file("f", "x")], 2, named="f"),
    "wheelhouse-prune-traversal": Case(
        lambda w: ["wheelhouse", "prune", _house(w, _traversal_manifest(w), wheel=True), "--plugin", "a/b"],
        3,
        "victim.txt",
    ),
    "wheelhouse-check-traversal": Case(
        lambda w: ["wheelhouse", "check", _house(w, _traversal_manifest(w), wheel=True)], 3, "victim.txt"
    ),
    "wheelhouse-prune-unknown-plugin": Case(
        lambda w: ["wheelhouse", "prune", _house(w, wheel=True), "--plugin", "x/y"], 2, named="x/y"
    ),
    "wheelhouse-upload-ftp": Case(
        lambda w: ["wheelhouse", "upload", _house(w, wheel=True), "--repository-url", "ftp://x/"], 2, "ftp://x/"
    ),
    "wheelhouse-upload-closed-port-login": Case(
        lambda w: [
            "wheelhouse",
            "upload",
            _house(w, wheel=True),
            "--repository-url",
            f"http://u:{SECRET}@127.0.0.1:9/",
        ],
        6,
        named="127.0.0.1:9",
    ),
    "pack-wheelhouse-is-a-file": Case(lambda w: w.pack(w.package(), "--wheelhouse", w.file("f", "x")), 2, "f"),
    "pack-mirror-url-ftp": Case(lambda w: w.pack(w.package(), "--mirror-url", "ftp://m/simple"), 2, "ftp://m"),
}

# --- app DSL files and bundles ---------------------------------------------------------------------------------

DSL_HEAD = "app:\n  name: x\nkind: app\nversion: 0.1.5\n"
CHECKSUM = "a" * 64
ALIAS_BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{previous}'] * 9) if previous else ', '.join('x' * 9)}]\n"
    for previous, name in zip(["", *"abcdefg"], "abcdefgh", strict=True)
)


def _dsl(body: str) -> Argv:
    return lambda w: w.pack(w.file("app.yml", DSL_HEAD + body))


def _bundle_with(w: World, dependency: str, assets: dict[str, bytes]) -> Path:
    manifest = (
        "name: x\nlabels: {en_US: x}\ndescription: {en_US: x}\nicon: icon.svg\nversion: 0.0.1\nauthor: a\n"
        f"type: bundle\ndependencies:\n- type: package\n  value: {{path: {dependency}}}\ntags: []\n"
    ).encode()
    entries = [Entry("manifest.yaml", manifest, method=DEFLATED), Entry("_assets/icon.svg", b"<svg/>")]
    return w.package("b.difybndl", [*entries, *(Entry(f"_assets/{name}", data) for name, data in assets.items())])


FLEET: dict[str, Case] = {
    "dsl-a-list": Case(lambda w: w.pack(w.file("app.yml", "- a\n")), 2, named="app.yml"),
    "dsl-alias-bomb": Case(lambda w: w.pack(w.file("app.yml", ALIAS_BOMB + "kind: app\n")), 2, named="app.yml"),
    "dsl-nul-byte": Case(_dsl("x: \x00\n"), 2, named="app.yml"),
    "dsl-dependencies-not-a-list": Case(_dsl("dependencies: 7\n"), 2, named="app.yml"),
    "dsl-dependency-null": Case(_dsl("dependencies:\n- null\n"), 2, named="dependencies[0]"),
    "dsl-unknown-dependency-type": Case(_dsl("dependencies:\n- type: evil\n  value: {}\n"), 2, "dependencies[0]"),
    "dsl-marketplace-id-traversal": Case(
        _dsl(
            f"dependencies:\n- type: marketplace\n  value:\n    marketplace_plugin_unique_identifier: ../../x:1.0.0@{CHECKSUM}\n"
        ),
        2,
        named="dependencies[0]",
    ),
    "dsl-github-traversal": Case(
        _dsl(
            "dependencies:\n- type: github\n  value:\n    repo: ../..\n    version: ../../x\n"
            f"    package: a.difypkg\n    github_plugin_unique_identifier: o/n:1.0.0@{CHECKSUM}\n"
        ),
        2,
        named="dependencies[0]",
    ),
    "dsl-package-without-its-file": Case(
        _dsl(f"dependencies:\n- type: package\n  value:\n    plugin_unique_identifier: o/n:1.0.0@{CHECKSUM}\n"),
        2,
        named="dependencies[0]",
    ),
    "bundle-of-a-non-zip": Case(
        lambda w: ["bundle", w.file("n.difypkg", "hello"), "-o", w.out / "b.difybndl"], 3, named="n.difypkg"
    ),
    "bundle-output-under-dev-null": Case(
        lambda w: ["bundle", w.package(), "-o", "/dev/null/b.difybndl"], 9, named="/dev/null"
    ),
    "bundle-output-not-difybndl": Case(lambda w: ["bundle", w.package(), "-o", w.out / "b.zip"], 2, named="b.zip"),
    "inspect-bundle-asset-traversal": Case(
        lambda w: ["inspect", _bundle_with(w, "../../../etc/passwd", {})], 3, named="b.difybndl"
    ),
    "inspect-bundle-broken-package": Case(
        lambda w: ["inspect", _bundle_with(w, "abc", {"abc": b"not a zip"})], 3, named="b.difybndl: _assets/abc"
    ),
    "verify-bundle-broken-package": Case(
        lambda w: ["verify", _bundle_with(w, "abc", {"abc": b"not a zip"}), "--cache-dir", w.cache],
        3,
        named="b.difybndl: _assets/abc",
    ),
}

CASES: dict[str, Case] = {
    **SOURCES, **SERVERS, **LISTS, **PACKAGES, **FOLDERS, **DEPS, **CONFIG, **KEYS, **OPTIONS, **ENVIRONMENT, **INDEX, **SERVED, **WHEELHOUSES, **FLEET,
}  # fmt: skip


# --- running a case --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "sweep", bits=2048)


@pytest.fixture
def world(tmp_path: Path, index: LocalIndex, keys: tuple[Path, Path]) -> Iterator[World]:
    with serve() as web:
        w = World(tmp_path, index, web, keys)
        for folder in (w.inputs, w.tmp, w.cwd, w.root / "home"):
            folder.mkdir()
        yield w


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``root`` but out/ and cache/ (where a run may write), with its size and mtime."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root):
        if Path(dirpath) == root:
            dirnames[:] = [name for name in dirnames if name not in ("out", "cache")]
        for name in dirnames + filenames:
            path = Path(dirpath, name)
            info = path.lstat()
            found[str(path.relative_to(root))] = (info.st_size, 0 if stat.S_ISDIR(info.st_mode) else info.st_mtime_ns)
    return found


def _limit_resources() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    resource.setrlimit(resource.RLIMIT_FSIZE, (FILE_LIMIT, FILE_LIMIT))


def _environment(w: World, case: Case) -> dict[str, str | None]:
    env: dict[str, str | None] = dict.fromkeys(PROXY_NAMES, CLOSED)
    env.update(
        {
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "TMPDIR": str(w.tmp),
            "HOME": str(w.root / "home"),
            "XDG_CACHE_HOME": str(w.root / "home" / ".cache"),
            "DIFY_REPACK_CACHE_DIR": str(w.cache),
            "PIP_CONFIG_FILE": os.devnull,
            "SSL_CERT_FILE": None,
            "SSL_CERT_DIR": None,
            "REQUESTS_CA_BUNDLE": None,
            **{name: None for name in SCRUBBED_NAMES if name != "DIFY_REPACK_CACHE_DIR"},
        }
    )
    env.update(case.env(w) if case.env else {})
    return env


@dataclass(frozen=True)
class Result:
    code: int
    out: str
    err: str


def _run_subprocess(w: World, argv: list[str], env: dict[str, str | None]) -> Result:
    full = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "UV_")) and k not in env}
    full.update({k: v for k, v in env.items() if v is not None})
    try:
        done = subprocess.run(
            [str(EXE), *argv],
            cwd=w.cwd,
            env=full,
            capture_output=True,
            text=True,
            errors="replace",
            timeout=TIME_LIMIT,
            preexec_fn=_limit_resources,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"no answer within {TIME_LIMIT} s: {argv}")
    return Result(done.returncode, done.stdout, done.stderr)


def _run_in_process(
    w: World,
    argv: list[str],
    env: dict[str, str | None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Result:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.chdir(w.cwd)
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return Result(code, captured.out, captured.err)


@pytest.fixture
def evil_index(world: World) -> Iterator[Callable[[], str | None]]:
    """Serves the hostile index a case asked for (``index="EVIL"``) beside the shared index's files."""
    stack: list[object] = []

    def start() -> str | None:
        root = world.env.get("_EVIL_INDEX_ROOT")
        if root is None:
            return None
        files = Path(root) / "files"
        files.symlink_to(world.index.files)
        context = serve_index(Path(root))
        served = context.__enter__()
        stack.append(context)
        for page in (world.index.root / "simple").iterdir():
            if page.is_dir() and not (Path(root) / "simple" / page.name).exists():
                (Path(root) / "simple" / page.name).symlink_to(page)
        return served.url

    yield start
    for context in stack:
        context.__exit__(None, None, None)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("name", "mode"),
    [
        (name, mode)
        for name, case in CASES.items()
        # Cases that block in a system call (FIFOs, /dev/zero) are bounded only in a subprocess.
        for mode in (("subprocess", "in-process") if case.in_process else ("subprocess",))
    ],
)
def test_bad_input(
    name: str,
    mode: str,
    world: World,
    evil_index: Callable[[], str | None],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    case = CASES[name]
    argv = [str(arg) for arg in case.argv(world)]
    evil = evil_index()
    if evil is not None:
        argv = [evil if arg == "EVIL" else arg for arg in argv]
    env = _environment(world, case)
    before = _snapshot(world.root)  # after the case built its inputs
    if mode == "subprocess":
        result = _run_subprocess(world, argv, env)
    else:
        result = _run_in_process(world, argv, env, monkeypatch, capsys)
    text = result.out + result.err

    assert result.code == case.code, text
    assert result.code in DOCUMENTED, text
    assert "Traceback" not in text and "error: unexpected" not in text, text
    assert SECRET not in text, text
    errors = [line for line in result.err.splitlines() if line.startswith("error:")]
    if case.code != 0:
        assert len(errors) == 1, result.err
        named = case.named(world) if callable(case.named) else case.named
        shown = str(argv[1]) if named is None else named
        assert shown in errors[0], result.err
        assert len(errors[0]) < 2000, "an error line that long repeats untrusted input unbounded"
        assert str(world.tmp) not in errors[0] and "dify-repack-" not in errors[0], errors[0]
        assert not [p for p in world.out.rglob("*") if p.is_file()] if world.out.exists() else True, "a package in -o"
    assert sorted(p.name for p in world.tmp.iterdir()) == [], "left in TMPDIR"
    assert list(world.cache.rglob("*.part")) == [] if world.cache.exists() else True, ".part in the cache"
    assert list(world.cwd.iterdir()) == [], "written in the working directory"
    # Besides -o and the cache, only the index a case serves and HOME (uv's own cache) may change.
    after = {path: info for path, info in _snapshot(world.root).items() if not path.startswith(("evil-index", "home"))}
    written = sorted(path for path, info in after.items() if before.get(path) != info)
    assert written == [], f"written outside -o: {written}"


def test_a_download_is_stored_as_served_whatever_its_content_encoding(tmp_path: Path) -> None:
    """As pip does: a Content-Encoding is not undone, so a gzip bomb stays small and broken gzip is no error here
    (the size, sha256 or zip check that follows decides)."""
    bomb = _gzip_bomb()
    with serve() as web:
        web.route("/bomb", Reply(body=bomb, headers={"Content-Encoding": "gzip"}))
        web.route("/broken", Reply(body=b"not gzip at all", headers={"Content-Encoding": "gzip"}))
        with make_client() as client:
            download(client, f"{web.url}/bomb", tmp_path / "bomb")
            download(client, f"{web.url}/broken", tmp_path / "broken")
        assert web.seen("/bomb")[0].headers["accept-encoding"] == "identity"
    assert (tmp_path / "bomb").read_bytes() == bomb
    assert (tmp_path / "broken").read_bytes() == b"not gzip at all"

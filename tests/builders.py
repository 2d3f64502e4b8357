"""Tiny real distributions for tests: wheels, sdists with an in-tree backend, plugins, and a local index."""

from __future__ import annotations

import base64
import hashlib
import html
import io
import tarfile
import textwrap
import threading
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from packaging.utils import canonicalize_name

from fakeweb import use_tls


def _record_line(path: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{path},sha256={digest},{len(data)}"


def make_wheel(
    directory: Path,
    name: str,
    version: str,
    *,
    tag: str = "py3-none-any",
    requires: tuple[str, ...] = (),
    requires_python: str | None = None,
    files: Mapping[str, str] | None = None,
    metadata: tuple[str, ...] = (),
) -> Path:
    """A valid wheel whose package ``name`` (import name with '-' as '_') sets ``VERSION``.

    ``metadata`` adds header lines to METADATA (``License-Expression: MIT``, ``Classifier: ...``).
    """
    module = name.replace("-", "_").lower()
    dist = f"{name.replace('-', '_')}-{version}"
    contents = {f"{module}/__init__.py": f"VERSION = {version!r}\n", **(files or {})}
    headers = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    headers += [f"Requires-Dist: {requirement}" for requirement in requires]
    if requires_python:
        headers.append(f"Requires-Python: {requires_python}")
    headers += metadata
    pure = tag.endswith("-none-any")
    contents[f"{dist}.dist-info/METADATA"] = "\n".join(headers) + "\n"
    contents[f"{dist}.dist-info/WHEEL"] = (
        f"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: {'true' if pure else 'false'}\nTag: {tag}\n"
    )
    record = [_record_line(path, text.encode()) for path, text in contents.items()]
    record.append(f"{dist}.dist-info/RECORD,,")
    contents[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
    path = directory / f"{dist}-{tag}.whl"
    directory.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as archive:
        for member, text in contents.items():
            archive.writestr(member, text)
    return path


# A PEP 517 backend inside the sdist: it needs no download, so sdist builds run hermetically.
# "native" makes it tag the wheel for the building interpreter, as a C extension would be;
# "broken" makes it fail the way a missing compiler does.
_BACKEND = """
import base64, hashlib, os, sys, sysconfig, zipfile
NAME, VERSION, MODE = {name!r}, {version!r}, {mode!r}

def _tag():
    if MODE != "native":
        return "py3-none-any"
    abi = "cp%d%d" % sys.version_info[:2]
    return "%s-%s-%s" % (abi, abi, sysconfig.get_platform().replace("-", "_").replace(".", "_"))

def get_requires_for_build_wheel(config_settings=None):
    return []

def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if MODE == "broken":
        sys.stderr.write("error: command 'gcc' failed: No such file or directory\\n")
        raise SystemExit(1)
    module = NAME.replace("-", "_").lower()
    dist = "%s-%s" % (NAME.replace("-", "_"), VERSION)
    files = {{
        module + "/__init__.py": "VERSION = %r\\n" % VERSION,
        dist + ".dist-info/METADATA": "Metadata-Version: 2.1\\nName: %s\\nVersion: %s\\n" % (NAME, VERSION),
        dist + ".dist-info/WHEEL": "Wheel-Version: 1.0\\nRoot-Is-Purelib: %s\\nTag: %s\\n"
        % ("true" if MODE != "native" else "false", _tag()),
    }}
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append("%s,sha256=%s,%d" % (path, digest, len(text.encode())))
    files[dist + ".dist-info/RECORD"] = "\\n".join(record + [dist + ".dist-info/RECORD,,"]) + "\\n"
    filename = "%s-%s.whl" % (dist, _tag())
    with zipfile.ZipFile(os.path.join(wheel_directory, filename), "w") as archive:
        for path, text in files.items():
            archive.writestr(path, text)
    return filename
"""


def make_sdist(directory: Path, name: str, version: str, *, mode: str = "pure") -> Path:
    """An sdist built by an in-tree backend (mode: pure, native, broken)."""
    base = f"{name.replace('-', '_')}-{version}"
    members = {
        "pyproject.toml": textwrap.dedent(
            f"""\
            [build-system]
            requires = []
            build-backend = "backend"
            backend-path = ["."]

            [project]
            name = "{name}"
            version = "{version}"
            """
        ),
        "backend.py": _BACKEND.format(name=name, version=version, mode=mode),
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
    }
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{base}.tar.gz"
    with tarfile.open(path, "w:gz") as archive:
        for member, text in members.items():
            data = text.encode()
            info = tarfile.TarInfo(f"{base}/{member}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


@dataclass(frozen=True)
class IndexRequest:
    path: str
    authorization: str | None  # the header as sent, None when absent
    user_agent: str  # "dify-repack" for our downloads, uv's own for uv


@dataclass
class LocalIndex:
    """A PEP 503 index on 127.0.0.1 serving ``files``; ``requests`` logs every path asked for.

    With ``auth`` (user, password) every request needs HTTP basic auth, else 401; ``seen`` logs each request
    with its Authorization header.
    """

    root: Path
    url: str = ""
    requests: list[str] = field(default_factory=list)
    auth: tuple[str, str] | None = None
    seen: list[IndexRequest] = field(default_factory=list)

    @property
    def files(self) -> Path:
        return self.root / "files"

    def publish(self) -> None:
        """(Re)write the simple pages for every file in ``files``."""
        projects: dict[str, list[Path]] = {}
        for path in sorted(self.files.iterdir()):
            project = path.name.split("-")[0] if path.suffix == ".whl" else path.name.rsplit("-", 1)[0]
            projects.setdefault(canonicalize_name(project), []).append(path)
        simple = self.root / "simple"
        simple.mkdir(parents=True, exist_ok=True)
        for project, paths in projects.items():
            links = "".join(
                f'<a href="/files/{html.escape(p.name)}#sha256={hashlib.sha256(p.read_bytes()).hexdigest()}">'
                f"{html.escape(p.name)}</a>\n"
                for p in paths
            )
            page = simple / project
            page.mkdir(exist_ok=True)
            (page / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")
        (simple / "index.html").write_text(
            "".join(f'<a href="/simple/{project}/">{project}</a>\n' for project in projects)
        )


@contextmanager
def serve_index(
    root: Path, *, auth: tuple[str, str] | None = None, tls: tuple[Path, Path] | None = None
) -> Iterator[LocalIndex]:
    """Serve ``root`` as an index; ``tls`` is (certificate, key) for https (see fakeweb.private_ca)."""
    index = LocalIndex(root, auth=auth)
    index.files.mkdir(parents=True, exist_ok=True)
    expected = "Basic " + base64.b64encode(":".join(auth).encode()).decode() if auth else None

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            index.requests.append(self.path)

        def send_head(self):  # type: ignore[no-untyped-def]
            given = self.headers.get("Authorization")
            index.seen.append(IndexRequest(self.path, given, self.headers.get("User-Agent", "")))
            if expected is not None and given != expected:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="test index"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            return super().send_head()

    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(Handler, directory=str(root)))
    scheme = use_tls(server, tls)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    index.url = f"{scheme}://127.0.0.1:{server.server_address[1]}/simple"
    try:
        yield index
    finally:
        server.shutdown()
        server.server_close()


# A stand-in for the Dify SDK: importable as dify_plugin, and `python -m main` sends one heartbeat.
FAKE_SDK_FILES = {
    "dify_plugin/heartbeat.py": (
        "import json, sys, time\n"
        "def run():\n"
        "    sys.stdout.write(json.dumps({'event': 'heartbeat', 'session_id': None, 'data': {}}) + '\\n\\n')\n"
        "    sys.stdout.flush()\n"
        "    time.sleep(60)\n"
    ),
}

MAIN_PY = "from dify_plugin.heartbeat import run\n\nif __name__ == '__main__':\n    run()\n"


def manifest_yaml(
    *,
    name: str = "demo",
    version: str = "0.1.0",
    arch: tuple[str, ...] = ("amd64",),
    language: str = "python",
) -> str:
    arches = "".join(f"    - {a}\n" for a in arch)
    return (
        textwrap.dedent(
            f"""\
        version: {version}
        type: plugin
        author: tester
        name: {name}
        label:
          en_US: Demo
        description:
          en_US: A test plugin
        icon: icon.svg
        resource:
          memory: 1048576
        plugins:
          tools:
            - provider/demo.yaml
        meta:
          version: 0.0.1
          arch:
        """
        )
        + arches
        + textwrap.indent(
            textwrap.dedent(
                f"""\
            runner:
              language: {language}
              version: "3.12"
              entrypoint: main
            """
            ),
            "  ",
        )
        + "created_at: 2026-01-01T00:00:00Z\n"
    )


def make_plugin(directory: Path, files: Mapping[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    defaults = {
        "manifest.yaml": manifest_yaml(),
        "main.py": MAIN_PY,
        "_assets/icon.svg": "<svg/>",
        "provider/demo.yaml": "identity:\n  name: demo\n",
    }
    for relative, text in {**defaults, **files}.items():
        if text is None:
            continue
        path = directory / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return directory


# DAEMON-FACTS §1: these three entries give this checksum (the daemon hashes raw digests, not hex strings).
CHECKSUM_VECTOR = {"manifest.yaml": b"author: a\n", "main.py": b"print(1)\n", "wheels/x.whl": b""}
CHECKSUM_VECTOR_SUM = "f3b71a438484b65f2f17c949112cf1a07b71d3045c2adf43ed3f23625eadf2b9"


def daemon_checksum(package: Path) -> str:
    """DAEMON-FACTS §1 written out with hashlib alone: sha256 over sha256(path) + sha256(content), raw 32-byte
    digests, file entries sorted by path (bytewise)."""
    with zipfile.ZipFile(package) as archive:
        entries = sorted(
            (info.filename.encode(), archive.read(info)) for info in archive.infolist() if not info.is_dir()
        )
    outer = hashlib.sha256()
    for path, content in entries:
        outer.update(hashlib.sha256(path).digest())
        outer.update(hashlib.sha256(content).digest())
    return outer.hexdigest()

"""Slim packages: no wheels inside; every dependency comes from the internal mirror that serves the wheelhouse.

Each daemon path is pointed at the mirror from inside the package, because the daemon replaces uv's environment
(DAEMON-FACTS §4): requirements.txt names it (``--index-url``; a ``-i $PIP_MIRROR_URL`` on uv's command line
takes precedence over that line, pip reads the line) and pins every file by sha256; pyproject.toml's
``[tool.uv] index-url`` (a key every daemon's uv knows); uv.lock's file URLs, which ``uv sync --frozen`` fetches.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin

import tomlkit
from packaging.utils import canonicalize_name
from tomlkit.items import Table

from .errors import DependencyError, NetworkError
from .http import make_client, open_stream, read_bounded
from .manifest import Manifest
from .mirror_serve import mirror_address, serve_locally
from .offline import WHEELS_DIR, regenerate_lock, requirements_lines
from .redaction import shown_line, shown_name
from .requirements import tomllib
from .targets import Target
from .wheelhouse import (
    FILES_DIR,
    HouseFile,
    Incoming,
    Wheelhouse,
    add_wheels,
    files_url,
    mirror_origin,
    plugin_key,
    record_plugin,
    write_pages,
)
from .wheels import Selected

MIRROR_HEADER = "# Written by dify-repack: a slim package, installed from the internal mirror below"
_HASH = re.compile(r"--hash[= ]sha256:([0-9a-f]{64})")
# A project page lists every file of every release: a few hundred kB for the largest projects.
_MAX_PROJECT_PAGE = 32 * 1024 * 1024


def add_to_wheelhouse(
    wheelhouse: Path, manifest: Manifest, selected: Sequence[Selected], *, record: bool = True
) -> dict[Path, HouseFile]:
    """Put every wheel of ``selected`` into the wheelhouse; map each cache file to its wheelhouse entry.

    With ``record`` false the plugin is not listed yet: ``record_in_wheelhouse`` does it once it is accepted."""
    built = {path for item in selected if item.built for path in item.files.values()}
    paths = sorted({path for item in selected for path in item.files.values()})
    result = add_wheels(
        wheelhouse,
        plugin_key(manifest.plugin_id, manifest.version) if record else None,
        [Incoming(path, path in built) for path in paths],
    )
    by_name = {item.filename: item for item in result.files}
    return {path: by_name[path.name] for path in paths}


def record_in_wheelhouse(wheelhouse: Path, manifest: Manifest, house: Mapping[Path, HouseFile]) -> None:
    """List the plugin in the wheelhouse as needing ``house`` (what ``add_to_wheelhouse`` returned)."""
    record_plugin(wheelhouse, plugin_key(manifest.plugin_id, manifest.version), house.values())


def make_slim(
    root: Path,
    selected: Sequence[Selected],
    targets: Sequence[Target],
    mirror_url: str,
    wheelhouse: Path,
    house: Mapping[Path, HouseFile],
    uv_cache: Path,
    *,
    lock_from_mirror: bool = False,
) -> None:
    """Turn the offline configuration in ``root`` into a slim one: the wheels leave, the mirror comes in."""
    shutil.rmtree(root / WHEELS_DIR)
    write_slim_requirements(root, selected, targets, mirror_url, house)
    if (root / "pyproject.toml").is_file():
        point_pyproject_at_mirror(root, mirror_url)
        lock_from_wheelhouse(root, targets, wheelhouse, list(house.values()), mirror_url, uv_cache=uv_cache)
        if lock_from_mirror:
            take_lock_urls_from_mirror(root, mirror_url)


def write_slim_requirements(
    root: Path,
    selected: Sequence[Selected],
    targets: Sequence[Target],
    mirror_url: str,
    house: Mapping[Path, HouseFile],
) -> None:
    """Exact pins, each with the sha256 of every file any target may install; the mirror as the index."""
    body = []
    for line, item in zip(requirements_lines(selected, targets), selected, strict=True):
        digests = sorted({house[path].sha256 for path in item.files.values()})
        body.append(line + "".join(f" \\\n    --hash=sha256:{digest}" for digest in digests) + "\n")
    # pip ignores a plain-http index on any host but localhost unless it is trusted (uv reads the line too).
    host, _, _ = mirror_address(mirror_url)
    trusted = f"--trusted-host {host}\n" if mirror_url.startswith("http://") else ""
    text = f"{MIRROR_HEADER} (every file pinned by its sha256).\n--index-url {mirror_url}\n{trusted}{''.join(body)}"
    (root / "requirements.txt").write_text(text, encoding="utf-8")


def point_pyproject_at_mirror(root: Path, mirror_url: str) -> None:
    """Replace the offline ``[tool.uv]`` (no-index, find-links) by the mirror; keep environments and package."""
    path = root / "pyproject.toml"
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    old = document["tool"]["uv"]
    assert isinstance(old, Table)
    table = tomlkit.table()
    table.add(tomlkit.comment("Written by dify-repack: resolve and install from the internal mirror only, for the"))
    table.add(tomlkit.comment("daemon's Linux CPython only. index-url is a key every daemon's uv knows."))
    table["index-url"] = mirror_url
    for key in ("environments", "package"):
        if key in old:
            table[key] = old[key]
    table.add(tomlkit.nl())
    document["tool"]["uv"] = table
    path.write_text(tomlkit.dumps(document), encoding="utf-8")


def lock_from_wheelhouse(
    root: Path,
    targets: Sequence[Target],
    wheelhouse: Path,
    files: Sequence[HouseFile],
    mirror_url: str,
    *,
    uv_cache: Path,
) -> None:
    """Write uv.lock against this plugin's files of the wheelhouse, served on loopback under the mirror URL's
    paths; then the loopback origin becomes the mirror's, so every file URL in the lock is one the mirror serves.

    Only this plugin's files are offered: other plugins' newer versions must not move the lock off the pins.
    """
    with tempfile.TemporaryDirectory(prefix="dify-repack-view-") as temp:
        simple = Path(temp) / "simple"
        write_pages(simple, files)
        with serve_locally(simple, wheelhouse / FILES_DIR, mirror_url) as local_url:
            _set_index_url(root, local_url)
            try:
                regenerate_lock(root, targets, uv_cache=uv_cache, offline=False)
            finally:
                _set_index_url(root, mirror_url)
    lock = root / "uv.lock"
    local_origin = mirror_origin(local_url)
    text = lock.read_text(encoding="utf-8")
    lock.write_text(text.replace(f'"{local_origin}/', f'"{mirror_origin(mirror_url)}/'), encoding="utf-8")
    if local_origin in lock.read_text(encoding="utf-8"):
        raise DependencyError(f"uv.lock still names the temporary index {local_origin} after rewriting")


def _set_index_url(root: Path, url: str) -> None:
    path = root / "pyproject.toml"
    document = tomlkit.parse(path.read_text(encoding="utf-8"))
    document["tool"]["uv"]["index-url"] = url
    path.write_text(tomlkit.dumps(document), encoding="utf-8")


def slim_mirror_url(root: Path) -> str | None:
    """The mirror a slim package written by ``pack --mirror-url`` installs from; None for any other package."""
    path = root / "requirements.txt"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    if not lines or not lines[0].startswith(MIRROR_HEADER):
        return None
    return next((line.split(None, 1)[1].strip() for line in lines if line.startswith("--index-url ")), None)


def missing_from_wheelhouse(root: Path, house: Wheelhouse) -> list[str]:
    """Files the slim package in ``root`` pins that the wheelhouse lacks, named as well as the package allows
    (its text shown bounded and escaped: the package may be anyone's)."""
    text = (root / "requirements.txt").read_text(encoding="utf-8", errors="replace")
    have = {item.sha256 for item in house.files.values() if (house.root / FILES_DIR / item.filename).is_file()}
    # The file name from the lock, or from the wheelhouse's own record of a file gone from disk.
    names = {**{item.sha256: item.filename for item in house.files.values()}, **_lock_file_names(root / "uv.lock")}
    missing = []
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        requirement = block.split(";", 1)[0].split("\\", 1)[0].strip()
        for digest in _HASH.findall(block):
            if digest not in have:
                name = names.get(digest)
                missing.append(shown_name(name) if name else f"a file of {shown_line(requirement)} (sha256 {digest})")
    return missing


def _lock_file_names(lock: Path) -> dict[str, str]:
    if not lock.is_file():
        return {}
    try:
        data = tomllib.loads(lock.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return {}
    names = {}
    for package in data.get("package", []):
        for wheel in package.get("wheels", []):
            url, digest = str(wheel.get("url", "")), str(wheel.get("hash", ""))
            if url and digest.startswith("sha256:"):
                names[digest.removeprefix("sha256:")] = url.rsplit("/", 1)[-1]
    return names


def mirror_settings(mirror_url: str, wheelhouse: Path) -> tuple[str, ...]:
    """The Dify setting and how to serve the wheelhouse, as lines for the summary."""
    host, port, path = mirror_address(mirror_url)
    prefix = path.rstrip("/").rsplit("/", 1)[0]  # the folder the wheelhouse is served at
    files = files_url(mirror_url)
    nginx = (
        f"location {prefix}/ {{ alias /srv/wheelhouse/; }}"
        if prefix
        else "a mirror URL with a path is needed there, e.g. http://nginx/wheelhouse/simple with "
        "location /wheelhouse/ { alias /srv/wheelhouse/; }"
    )
    return (
        f"PIP_MIRROR_URL={mirror_url}  # plugin daemon, optional: the package names this mirror for every daemon "
        "version; if PIP_MIRROR_URL is set at all it must be this URL (uv's -i overrides the package's own line)",
        f"serve {wheelhouse} so that {mirror_url} is its simple/ and {files} its files/:",
        f"  Dify's nginx (the folder mounted read-only at /srv/wheelhouse): {nginx}",
        f"  a trial: python3 -m http.server {port} --directory {wheelhouse}"
        + ("" if not prefix else f"  (serves it at http://{host}:{port}/simple)"),
    )


class _Links(HTMLParser):
    """The ``<a href>`` of a PEP 503 project page."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if tag == "a" and href:
            self.hrefs.append(href)


def take_lock_urls_from_mirror(root: Path, mirror_url: str) -> None:
    """Point uv.lock's file URLs where the live mirror really serves each file (devpi, Nexus and Artifactory
    keep files elsewhere than the wheelhouse's ``files/``): read each project's page there, match by file name
    and sha256. Fails naming the first file the mirror lacks."""
    lock = root / "uv.lock"
    data = tomllib.loads(lock.read_text(encoding="utf-8"))
    text = lock.read_text(encoding="utf-8")
    base = mirror_url.rstrip("/") + "/"
    with make_client(timeout=30) as client:
        for package in data.get("package", []):
            wheels = package.get("wheels", [])
            if not wheels or "registry" not in package.get("source", {}):
                continue
            page = urljoin(base, f"{canonicalize_name(package['name'])}/")
            with open_stream(client, page, attempts=2) as response:
                body = read_bounded(response, page, _MAX_PROJECT_PAGE)
                parser = _Links()
                parser.feed(body.decode(response.encoding or "utf-8", errors="replace"))
            served = {}
            for href in parser.hrefs:
                url, _, fragment = urljoin(str(response.url), href).partition("#")
                if _fit_for_lock(url):
                    served[unquote(url.rsplit("/", 1)[-1])] = (url, fragment.removeprefix("sha256="))
            for wheel in wheels:
                name = unquote(str(wheel["url"]).rsplit("/", 1)[-1])
                found = served.get(name)
                digest = str(wheel.get("hash", "")).removeprefix("sha256:")
                if found is None or (found[1] and found[1] != digest):
                    raise NetworkError(
                        f"the mirror {mirror_url} does not serve {name}"
                        + (" with the wheelhouse's sha256" if found else ""),
                        tip="upload the wheelhouse first (dify-repack wheelhouse upload), or drop --lock-from-mirror",
                    )
                text = text.replace(f'"{wheel["url"]}"', f'"{found[0]}"')
    lock.write_text(text, encoding="utf-8")


def _fit_for_lock(url: str) -> bool:
    """Whether a link read from the mirror may go into uv.lock as it is: an http(s) URL that cannot end the
    TOML string it is written into (no quote, backslash or control character)."""
    return url.startswith(("http://", "https://")) and url.isprintable() and not any(c in url for c in '"\\')

"""The wheelhouse: one static PEP 503 index of every wheel the packed plugins need, grown run after run.

Layout of ``DIR`` (serve ``DIR`` so that ``DIR/simple`` is the mirror URL; DAEMON-FACTS §5 says pip, uv 0.9.x
and the newest uv all accept it over http and ``file://``)::

    files/<wheel file name>                  each file once, whichever plugins need it
    simple/index.html                        the project list
    simple/<normalized-name>/index.html      one <a href="../../files/NAME#sha256=..." data-requires-python=...>
    wheelhouse.json                          which plugin (author/name:version) needs which files, for prune

Updates are atomic and safe against a parallel run: an exclusive lock on ``DIR/.lock``; new files are written
under a temporary name and renamed; then the pages; the manifest last.
"""

from __future__ import annotations

import contextlib
import email.parser
import fcntl
import hashlib
import html
import io
import json
import logging
import os
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

from packaging.utils import canonicalize_name, parse_wheel_filename

from .credentials import ca_bundle, index_credentials
from .errors import EnvironmentProblem, NetworkError, PackageError, UsageError, VerificationError
from .files import CHUNK, atomic_output, file_sha256, write_atomically
from .redaction import redact
from .wheelfile import NotAWheel, check_wheel

FILES_DIR = "files"
SIMPLE_DIR = "simple"
MANIFEST = "wheelhouse.json"
SCHEMA = 1

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from twine.settings import Settings


@dataclass(frozen=True)
class HouseFile:
    """One wheel of the wheelhouse, as its index page lists it."""

    filename: str
    project: str  # normalized
    version: str
    sha256: str
    size: int
    requires_python: str | None = None


@dataclass(frozen=True)
class Incoming:
    """A wheel a plugin needs; ``built`` when it was built here from an sdist (its bytes are not canonical)."""

    path: Path
    built: bool = False


@dataclass(frozen=True)
class AddResult:
    added: tuple[str, ...]  # file names written now
    reused: tuple[str, ...]  # already there, byte for byte (or an equivalent local build)
    files: tuple[HouseFile, ...]  # what the plugin gets, in the wheelhouse's own bytes


@dataclass(frozen=True)
class PruneResult:
    plugins: tuple[str, ...]  # plugin keys dropped
    removed: tuple[str, ...]  # file names no remaining plugin needs


@dataclass(frozen=True)
class Wheelhouse:
    """The manifest of ``root``: every file and, per plugin key (``author/name:version``), the files it needs."""

    root: Path
    files: Mapping[str, HouseFile]
    plugins: Mapping[str, tuple[str, ...]]

    def needed(self) -> set[str]:
        return {name for names in self.plugins.values() for name in names}

    def to_json(self) -> dict[str, object]:
        return {
            "schema": SCHEMA,
            "files": {name: asdict(item) for name, item in sorted(self.files.items())},
            "plugins": {key: sorted(names) for key, names in sorted(self.plugins.items())},
        }


def read_wheelhouse(root: Path) -> Wheelhouse:
    """The manifest of ``root``; an empty wheelhouse when there is none yet."""
    path = root / MANIFEST
    if not path.is_file():
        if root.is_dir() and any(not path.name.startswith(".") for path in root.iterdir()):
            raise UsageError(
                f"{root} is not empty and holds no wheelhouse ({MANIFEST} is missing)",
                tip="give an empty or new folder, or one written by --wheelhouse",
            )
        return Wheelhouse(root, {}, {})
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("schema") != SCHEMA:
            raise ValueError(f"schema {data.get('schema')!r}")
        files = {name: HouseFile(**item) for name, item in data["files"].items()}
        plugins = {key: tuple(names) for key, names in data["plugins"].items()}
        # Names become paths under files/ (prune deletes them): a wheel file name, one path component, only.
        for name in {*files, *(item.filename for item in files.values()), *(n for ns in plugins.values() for n in ns)}:
            if not isinstance(name, str) or Path(name).name != name or name in (".", ".."):
                raise ValueError(f"{name!r} is not a file name")
            parse_wheel_filename(name)
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError) as error:
        raise PackageError(
            f"{path}: unreadable wheelhouse manifest ({error})",
            tip="restore it from a copy, or start a new wheelhouse in an empty folder",
        ) from None
    return Wheelhouse(root, files, plugins)


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """One writer at a time, across threads (each opens its own descriptor) and processes.

    A wheelhouse that cannot be written (read-only, not ours, full) is the host's problem (exit 9), here and
    in the writes made under the lock.
    """
    try:
        root.mkdir(parents=True, exist_ok=True)
        handle = (root / ".lock").open("a")
    except OSError as error:
        raise EnvironmentProblem.cannot_write(root, error, elsewhere="--wheelhouse DIR") from None
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        except OSError as error:
            raise EnvironmentProblem.cannot_write(root, error, elsewhere="--wheelhouse DIR") from None


def add_wheels(root: Path, plugin: str | None, wheels: Sequence[Incoming]) -> AddResult:
    """Put ``wheels`` into the wheelhouse (once each) and record that ``plugin`` needs them.

    A plugin key packed again replaces its old list; files only the old list needed stay until ``prune``.
    Without ``plugin`` the files are served and listed but needed by no plugin until ``record_plugin``.
    """
    added, reused, given = [], [], []
    with _locked(root):
        house = read_wheelhouse(root)
        files = dict(house.files)
        (root / FILES_DIR).mkdir(exist_ok=True)
        for wheel in sorted(wheels, key=lambda item: item.path.name):
            name = wheel.path.name
            existing = files.get(name)
            if existing is not None and (root / FILES_DIR / name).is_file():
                if existing.sha256 != (digest := file_sha256(wheel.path)) and not wheel.built:
                    raise PackageError(
                        f"{root}: {name} is already in the wheelhouse with other content "
                        f"(sha256 {existing.sha256[:12]}…, now {digest[:12]}…)",
                        tip="run `dify-repack wheelhouse check` on it; a file of the same name must never change",
                    )
                # A wheel built here again from the same sdist differs only in timestamps: keep the one served.
                reused.append(name)
                given.append(existing)
                continue
            item = _copy_in(wheel.path, root / FILES_DIR / name)
            files[name] = item
            added.append(name)
            given.append(item)
        plugins = (
            house.plugins if plugin is None else {**house.plugins, plugin: tuple(sorted(f.filename for f in given))}
        )
        _commit(Wheelhouse(root, files, plugins), house)
    return AddResult(tuple(added), tuple(reused), tuple(given))


def record_plugin(root: Path, plugin: str, files: Iterable[HouseFile]) -> None:
    """Record that ``plugin`` needs ``files``, which ``add_wheels`` put in earlier: one atomic manifest write.

    A slim package is recorded only once it is accepted (verified), so a failed or interrupted run leaves no
    plugin that names it, only files no plugin needs. A file gone or changed since (a ``prune`` in between)
    fails: the package pins it.
    """
    wanted = tuple(files)
    with _locked(root):
        house = read_wheelhouse(root)
        for item in wanted:
            if house.files.get(item.filename) != item or not (root / FILES_DIR / item.filename).is_file():
                raise VerificationError(
                    f"{root}: {item.filename} left the wheelhouse while the package was being verified",
                    tip="a `dify-repack wheelhouse prune` ran meanwhile? pack the plugin again",
                )
        plugins = {**house.plugins, plugin: tuple(sorted(item.filename for item in wanted))}
        _commit(Wheelhouse(root, house.files, plugins), house)


def prune(root: Path, plugins: Sequence[str]) -> PruneResult:
    """Forget ``plugins`` (each ``author/name`` for every version, or ``author/name:version``) and drop the
    files no remaining plugin needs: all in one update, or, when one of them is not there, none."""
    with _locked(root):
        house = read_wheelhouse(root)
        dropped: set[str] = set()
        for plugin in plugins:
            matching = {key for key in house.plugins if key == plugin or key.split(":", 1)[0] == plugin}
            if not matching:
                known = ", ".join(sorted(house.plugins)) or "none"
                raise UsageError(f"{root}: no plugin {plugin} in the wheelhouse (it holds: {known})")
            dropped |= matching
        remaining = {key: names for key, names in house.plugins.items() if key not in dropped}
        kept = {name for names in remaining.values() for name in names}
        removed = sorted(name for name in house.files if name not in kept)
        files = {name: item for name, item in house.files.items() if name in kept}
        # Pages and manifest first: a file is never listed after it is gone.
        _commit(Wheelhouse(root, files, remaining), house)
        for name in removed:
            (root / FILES_DIR / name).unlink(missing_ok=True)
    return PruneResult(tuple(sorted(dropped)), tuple(removed))


def existing_wheelhouse(root: Path) -> Wheelhouse:
    """The manifest of a wheelhouse that must be there already (the commands that look after one)."""
    if not (root / MANIFEST).is_file():
        raise UsageError(f"{root}: no wheelhouse here ({MANIFEST} is missing)", tip="pack with --wheelhouse DIR")
    return read_wheelhouse(root)


def check_wheelhouse(root: Path) -> list[str]:
    """Every problem found: a file missing, changed, or not listed; an index page that disagrees with the manifest."""
    house = existing_wheelhouse(root)
    problems = []
    for name, item in sorted(house.files.items()):
        path = root / FILES_DIR / name
        if not path.is_file():
            problems.append(f"{FILES_DIR}/{name}: missing")
        elif (digest := file_sha256(path)) != item.sha256:
            problems.append(f"{FILES_DIR}/{name}: sha256 {digest} does not match the index ({item.sha256})")
    for name in sorted(set(house.needed()) - set(house.files)):
        problems.append(f"{FILES_DIR}/{name}: needed by a plugin but not in the index")
    stray = sorted(path.name for path in (root / FILES_DIR).glob("*") if path.name not in house.files)
    problems += [f"{FILES_DIR}/{name}: not in the index" for name in stray if not name.startswith(".")]
    for project, page in sorted(project_pages(house.files.values()).items()):
        path = root / SIMPLE_DIR / project / "index.html"
        if not path.is_file() or path.read_text(encoding="utf-8") != page:
            problems.append(f"{SIMPLE_DIR}/{project}/index.html: does not list the files of the manifest")
    return problems


def require_intact(root: Path) -> None:
    problems = check_wheelhouse(root)
    if problems:
        raise VerificationError(
            f"{root}: {problems[0]}" + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            tip="`dify-repack wheelhouse check` lists every problem; pack the plugins again to restore the files",
        )


def project_pages(files: Iterable[HouseFile]) -> dict[str, str]:
    """The PEP 503 page of each project: relative links with ``#sha256=`` and ``data-requires-python``."""
    by_project: dict[str, list[HouseFile]] = {}
    for item in files:
        by_project.setdefault(item.project, []).append(item)
    pages = {}
    for project, items in by_project.items():
        links = []
        for item in sorted(items, key=lambda entry: entry.filename):
            requires = f' data-requires-python="{html.escape(item.requires_python)}"' if item.requires_python else ""
            href = f"../../{FILES_DIR}/{quote(item.filename)}#sha256={item.sha256}"
            links.append(f'<a href="{html.escape(href)}"{requires}>{html.escape(item.filename)}</a><br>\n')
        pages[project] = _page(f"Links for {project}", "".join(links))
    return pages


def root_page(projects: Iterable[str]) -> str:
    links = "".join(f'<a href="{quote(project)}/">{html.escape(project)}</a><br>\n' for project in sorted(projects))
    return _page("Simple index", links)


def write_pages(simple: Path, files: Iterable[HouseFile], *, old: Iterable[HouseFile] = ()) -> None:
    """Write the index under ``simple`` for ``files``: changed pages only, each atomically; drop emptied ones."""
    pages = project_pages(files)
    for project, page in pages.items():
        path = simple / project / "index.html"
        if not path.is_file() or path.read_text(encoding="utf-8") != page:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_atomically(path, page)
    for project in {item.project for item in old} - set(pages):
        shutil.rmtree(simple / project, ignore_errors=True)
    write_atomically(simple / "index.html", root_page(pages))


def _commit(house: Wheelhouse, old: Wheelhouse) -> None:
    write_pages(house.root / SIMPLE_DIR, house.files.values(), old=old.files.values())
    write_atomically(house.root / MANIFEST, json.dumps(house.to_json(), indent=1) + "\n")


def _page(title: str, body: str) -> str:
    return (
        "<!DOCTYPE html>\n<html>\n<head>\n"
        '<meta name="pypi:repository-version" content="1.0">\n'
        f"<title>{html.escape(title)}</title>\n</head>\n<body>\n{body}</body>\n</html>\n"
    )


def _copy_in(source: Path, target: Path) -> HouseFile:
    """Copy a wheel into the wheelhouse, hashed as it is written (one read), and describe what is served.

    A copy, not a hard link: editing a wheelhouse file in place must not change the cache's copy.
    """
    with atomic_output(target) as temp:
        digest = hashlib.sha256()
        with source.open("rb") as reading, temp.open("wb") as writing:
            while chunk := reading.read(CHUNK):
                digest.update(chunk)
                writing.write(chunk)
        return _describe(temp, target.name, digest.hexdigest())


def _describe(path: Path, filename: str, digest: str) -> HouseFile:
    try:
        name, version, _, _ = parse_wheel_filename(filename)
        raw = check_wheel(path, filename) or b""  # past MAX_METADATA it is not read: no Requires-Python is recorded
    except (ValueError, NotAWheel) as error:
        raise PackageError(f"{filename}: not a readable wheel ({error})") from None
    metadata = email.parser.BytesHeaderParser().parsebytes(raw)
    requires = metadata.get("Requires-Python")
    return HouseFile(
        filename=filename,
        project=canonicalize_name(name),
        version=str(version),
        sha256=digest,
        size=path.stat().st_size,
        requires_python=str(requires).strip() if requires else None,
    )


def plugin_key(plugin_id: str, version: str) -> str:
    return f"{plugin_id}:{version}"


def files_url(mirror_url: str) -> str:
    """Where ``files/`` is served when ``simple/`` is at ``mirror_url`` (the pages link to ``../../files/``)."""
    return urljoin(mirror_url.rstrip("/") + "/", f"../{FILES_DIR}/")


def mirror_origin(mirror_url: str) -> str:
    parts = urlsplit(mirror_url)
    return f"{parts.scheme}://{parts.netloc}"


@dataclass(frozen=True)
class UploadResult:
    repository: str  # without credentials
    uploaded: tuple[str, ...]
    skipped: tuple[str, ...]  # the repository had them already (HTTP 409)


def upload(root: Path, repository_url: str) -> UploadResult:
    """Upload every wheel of the wheelhouse to an existing repository (devpi, Nexus, Artifactory, ...) with
    twine's library. Credentials: in the URL, then ``~/.netrc`` for its host or a keyring, then
    ``TWINE_USERNAME``/``TWINE_PASSWORD``. They are never printed. The CA bundle is the one every request of
    the tool trusts (``--cert``, ``SSL_CERT_FILE``, ``REQUESTS_CA_BUNDLE``)."""
    # Imported here: twine and requests are heavy, and only this command needs them.
    from twine.settings import Settings

    require_intact(root)
    house = read_wheelhouse(root)
    url, username, password = _credentials(repository_url)
    shown = redact(repository_url)
    if not house.files:
        raise UsageError(f"{root}: the wheelhouse is empty; nothing to upload")
    settings = Settings(
        repository_url=url,
        username=username,
        password=password,
        non_interactive=True,
        disable_progress_bar=True,
        cacert=str(cacert) if (cacert := ca_bundle()) else None,
    )
    # twine logs its own error lines; the error raised here says it once.
    twine_logger = logging.getLogger("twine")
    level = twine_logger.level
    twine_logger.setLevel(logging.CRITICAL)
    try:
        return _upload_each(root, sorted(house.files), settings, shown)
    finally:
        twine_logger.setLevel(level)


def _upload_each(root: Path, names: list[str], settings: Settings, shown: str) -> UploadResult:
    import requests
    from twine.commands.upload import upload as twine_upload
    from twine.exceptions import TwineException

    uploaded, skipped = [], []
    # One file a call: twine's --skip-existing knows PyPI's answers only, so a conflict is read here (409).
    for name in names:
        output = io.StringIO()
        try:
            with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
                twine_upload(settings, [str(root / FILES_DIR / name)])
            uploaded.append(name)
        except TwineException as error:
            raise NetworkError(f"upload to {shown} refused: {redact(str(error))}") from None
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else 0
            if status == 409:
                skipped.append(name)
                continue
            raise NetworkError(
                f"upload of {name} to {shown} failed: HTTP {status}",
                tip="check the repository URL (its upload endpoint) and the credentials "
                "(in the URL, ~/.netrc, a keyring, or TWINE_USERNAME/TWINE_PASSWORD)",
            ) from None
        except requests.RequestException as error:
            raise NetworkError(f"upload to {shown} failed: {type(error).__name__}") from None
        finally:
            logger.debug("twine: %s", redact(output.getvalue()))
    return UploadResult(shown, tuple(uploaded), tuple(skipped))


def _credentials(repository_url: str) -> tuple[str, str | None, str | None]:
    """The URL without its user info, and the login: from the URL, ~/.netrc or a keyring as for indexes
    (credentials.py), else twine's ``TWINE_USERNAME``/``TWINE_PASSWORD``."""
    parts = urlsplit(repository_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise UsageError(f"{redact(repository_url)}: the repository URL must be http(s)://HOST/PATH")
    public, found = index_credentials(repository_url)
    if found is not None:
        return public, found.username, found.password or None
    return public, os.environ.get("TWINE_USERNAME"), os.environ.get("TWINE_PASSWORD")

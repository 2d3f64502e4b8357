"""What ``pack`` takes as input: a local plugin, or a Marketplace id, GitHub release asset or URL to download.

The forms, tried in this order:

- ``http(s)://…``: any URL, GitHub release links included;
- ``github:OWNER/REPO@TAG/ASSET.difypkg``: a release asset on GitHub, or GitHub Enterprise via ``GITHUB_URL``;
- a path to a ``.difypkg`` file or to a plugin directory (one with manifest.yaml), used in place;
- ``org/name:version[@checksum]``: a Marketplace identifier as Dify shows it (DAEMON-FACTS §7); without
  ``:version`` the Marketplace's latest version is taken (``latest_on_marketplace``).

Downloads go through ``http`` (proxies, CA bundles, retries, atomic files) and must be zips.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import quote

import httpx

from .errors import NetworkError, PackageError, StatusError, UsageError
from .http import ProgressCallback, download, make_client, open_stream, read_bounded
from .package import ZIP_MAGIC, zip_checksum
from .redaction import redact, shown_line, shown_name

SourceKind = Literal["file", "directory", "marketplace", "github", "url"]

DEFAULT_MARKETPLACE_URL = "https://marketplace.dify.ai"
DEFAULT_GITHUB_URL = "https://github.com"

# Author and name as manifest.yaml allows them; the checksum is the daemon's sha256 (DAEMON-FACTS §1).
_PLUGIN_ID = re.compile(
    r"(?P<org>[a-z0-9_-]{1,64})/(?P<name>[a-z0-9_-]{1,128})"
    r"(?::(?P<version>\d+\.\d+\.\d+(?:[.+-][0-9A-Za-z.+-]+)?)"
    r"(?:@(?P<checksum>[0-9a-fA-F]{64}))?)?"
)
# The plugin document Dify's console reads for a plugin page: {"data": {"plugin": {"latest_version": ...}}}.
_MAX_PLUGIN_DOCUMENT = 4 * 1024 * 1024
# The tag may hold slashes (``release/1.0``): the asset is whatever follows the last one.
_GITHUB = re.compile(r"github:(?P<owner>[\w.-]+)/(?P<repo>[\w.-]+)@(?P<tag>\S+)/(?P<asset>[^/\s]+)")
# As in pip requirement files: ``#`` starts a comment at a line start or after a space (URL fragments stay).
_COMMENT = re.compile(r"(?:^|\s)#.*")
_MAX_SOURCE_LIST = 1024 * 1024
_MAX_DOWNLOAD_NAME = 200
_FORMS_TIP = (
    "give a .difypkg file, a plugin directory, a Marketplace id (org/name:version[@checksum], or org/name for "
    "the latest), "
    "github:OWNER/REPO@TAG/ASSET.difypkg or an http(s):// URL"
)


@dataclass(frozen=True)
class PluginId:
    """A Marketplace identifier: ``org/name:version``, with the package checksum when Dify showed one.

    ``version`` is None for ``org/name`` alone: the latest version, looked up before the download.
    """

    org: str
    name: str
    version: str | None
    checksum: str | None = None

    def __str__(self) -> str:
        version = f":{self.version}" if self.version else ""
        suffix = f"@{self.checksum}" if self.checksum else ""
        return f"{self.org}/{self.name}{version}{suffix}"


@dataclass(frozen=True)
class ReleaseAsset:
    """A file attached to a GitHub release."""

    owner: str
    repo: str
    tag: str
    asset: str

    def url(self, github_url: str) -> str:
        return f"{github_url}/{self.owner}/{self.repo}/releases/download/{quote(self.tag)}/{quote(self.asset)}"


@dataclass(frozen=True)
class Source:
    """One input as typed (``text``) and what it names: ``path`` for local kinds, else what to download.

    ``plugin`` is set for "marketplace", ``release`` for "github", ``url`` for "url"; ``filename`` is the
    name a download gets in the destination folder.
    """

    text: str
    kind: SourceKind
    path: Path | None = None
    plugin: PluginId | None = None
    release: ReleaseAsset | None = None
    url: str | None = None
    filename: str | None = None


def parse_source(text: str, *, base: Path | None = None) -> Source:
    """Recognise one source; relative paths are taken from ``base`` (default: the working directory).

    Raises UsageError naming the accepted forms when ``text`` is none of them, PackageError for a directory
    without manifest.yaml.
    """
    text = text.strip()
    if not text:
        raise UsageError("an empty SOURCE", tip=_FORMS_TIP)
    if text.lower().startswith(("http://", "https://")):
        return _parse_url(text)
    if text.startswith("github:"):
        return _parse_github(text)
    path = Path(text) if base is None else base / text
    if _kind(path) == "directory":
        if not (path / "manifest.yaml").is_file():
            raise PackageError(
                f"{text}: directory has no manifest.yaml, so it is not a plugin",
                tip="give the plugin's top folder (the one holding manifest.yaml) or its .difypkg",
            )
        return Source(text, "directory", path=path)
    if _kind(path) == "file":
        # Whatever the suffix: reading the package checks that it is a zip.
        return Source(text, "file", path=path)
    if match := _PLUGIN_ID.fullmatch(text):
        checksum = match["checksum"]
        plugin = PluginId(match["org"], match["name"], match["version"], checksum.lower() if checksum else None)
        return Source(text, "marketplace", plugin=plugin, filename=_marketplace_name(plugin))
    # A URL typed without its scheme may carry a login: masked as redact() masks one with a scheme.
    shown = redact(f"https://{text}").removeprefix("https://") if "@" in text else text
    raise UsageError(
        f"{shown_name(shown)}: no such file or directory, and not a Marketplace id, github: asset or URL",
        tip=_FORMS_TIP,
    )


def _kind(path: Path) -> str | None:
    """ "directory", "file" or None (missing, or a name no file system takes, such as one too long)."""
    try:
        return "directory" if path.is_dir() else "file" if path.is_file() else None
    except OSError:
        return None


def _marketplace_name(plugin: PluginId) -> str:
    return f"{plugin.org}-{plugin.name}_{plugin.version or 'latest'}.difypkg"


def _parse_url(text: str) -> Source:
    try:
        url = httpx.URL(text)
    except httpx.InvalidURL as exc:
        raise UsageError(f"{text}: not a valid URL ({exc})", tip=_FORMS_TIP) from None
    if not url.host:
        raise UsageError(f"{text}: the URL names no host", tip=_FORMS_TIP)
    if url.port is not None and not 0 < url.port < 65536:
        raise UsageError(f"{text}: port {url.port} does not exist (1 to 65535)", tip=_FORMS_TIP)
    # httpx decodes the path, so an encoded slash in the last segment cannot smuggle in a directory.
    name = url.path.rsplit("/", 1)[-1]
    return Source(text, "url", url=text, filename=_download_name(name, text))


def _parse_github(text: str) -> Source:
    match = _GITHUB.fullmatch(text)
    if not match:
        raise UsageError(f"{text}: not a GitHub release asset", tip="write it as github:OWNER/REPO@TAG/ASSET.difypkg")
    if any(part in (".", "..") for part in (match["owner"], match["repo"], *match["tag"].split("/"))):
        raise UsageError(f"{text}: '.' and '..' are no owner, repository or tag names")
    release = ReleaseAsset(match["owner"], match["repo"], match["tag"], match["asset"])
    return Source(text, "github", release=release, filename=_download_name(release.asset, text))


def _download_name(name: str, text: str) -> str:
    """The file name for a download: the URL's last segment, made a ``.difypkg``, never a path."""
    if name in ("", ".", "..") or "\\" in name or "\0" in name:
        raise UsageError(f"{text}: the URL does not end in a file name", tip="link the .difypkg file itself")
    name = name if name.endswith(".difypkg") else f"{name}.difypkg"
    # The download's temporary name adds about 40 bytes: keep the whole under a file system's 255.
    return name if len(name.encode()) <= _MAX_DOWNLOAD_NAME else "download.difypkg"


def read_source_list(path: Path) -> list[Source]:
    """The sources in a ``pack -r`` file: one a line, ``#`` comments, blank lines; paths relative to it.

    Every line is checked before anything is downloaded; an error names the file and line.
    """
    try:
        # A FIFO would block the open for ever and /dev/zero never ends: a regular file of sane size only.
        if path.exists() and not path.is_file():
            raise UsageError(f"{path}: not a regular file, so not a source list")
        with path.open("rb") as handle:
            data = handle.read(_MAX_SOURCE_LIST + 1)
        if len(data) > _MAX_SOURCE_LIST:
            raise UsageError(f"{path}: larger than {_MAX_SOURCE_LIST} bytes; a source list is one source a line")
        lines = data.decode("utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"{path}: cannot read the source list ({exc})") from None
    sources = []
    for number, line in enumerate(lines, 1):
        entry = _COMMENT.sub("", line).strip()
        if not entry:
            continue
        try:
            sources.append(parse_source(entry, base=path.parent))
        except (UsageError, PackageError) as exc:
            raise type(exc)(f"{path}:{number}: {exc.message}", tip=exc.tip) from None
    if not sources:
        raise UsageError(f"{path}: lists no sources", tip="write one source a line; # starts a comment")
    return sources


def fetch_source(
    source: Source,
    dest_dir: Path,
    *,
    client: httpx.Client | None = None,
    marketplace_url: str | None = None,
    github_url: str | None = None,
    progress: ProgressCallback | None = None,
    timeout: float = 60.0,
    attempts: int = 4,
    backoff: float = 0.5,
) -> Path:
    """The local ``.difypkg`` or directory for ``source``: a path as is, else a download into ``dest_dir``.

    Bases come from the arguments, then ``DIFY_MARKETPLACE_URL``/``GITHUB_URL``, then the public sites.
    ``GITHUB_TOKEN`` is sent to the GitHub host only. ``timeout`` applies when no ``client`` is given.
    Raises NetworkError with a one-line message; no partial file is left behind. A download replaces a file
    of the same name in ``dest_dir``, so give sources whose names may clash separate folders.
    """
    if source.path is not None:
        return source.path
    assert source.filename is not None, "parse_source names every download"
    dest = dest_dir / source.filename
    github = _base_url(github_url, "GITHUB_URL", DEFAULT_GITHUB_URL)
    token = os.environ.get("GITHUB_TOKEN") or None
    with ExitStack() as stack:
        http_client = stack.enter_context(make_client(timeout=timeout)) if client is None else client

        def get(url: str) -> Path:
            # Authorization only ever starts on the GitHub host; httpx drops it when a redirect leaves it.
            auth = {"Authorization": f"Bearer {token}"} if token and _same_origin(url, github) else None
            download(
                http_client,
                url,
                dest,
                progress=progress,
                headers=auth,
                magic=ZIP_MAGIC,
                attempts=attempts,
                backoff=backoff,
            )
            return dest

        if source.plugin is not None:
            marketplace = _base_url(marketplace_url, "DIFY_MARKETPLACE_URL", DEFAULT_MARKETPLACE_URL)
            plugin = source.plugin
            if plugin.version is None:
                plugin = _latest(plugin, marketplace, http_client, attempts=attempts, backoff=backoff)
            return _check_checksum(plugin, _fetch_marketplace(plugin, marketplace, get))
        url = source.release.url(github) if source.release is not None else source.url
        assert url is not None, f"a {source.kind} source has a path, plugin, release or url"
        try:
            return get(url)
        except StatusError as exc:
            if _same_origin(url, github) and exc.status in (401, 403, 404, 429):
                raise NetworkError(exc.message, tip=_github_tip(exc.status, token)) from None
            raise


def latest_on_marketplace(
    source: Source, *, marketplace_url: str | None = None, client: httpx.Client | None = None, timeout: float = 30.0
) -> Source:
    """``source`` with the version (and checksum) of the Marketplace's latest release when it named none.

    Any other source comes back unchanged. Raises NetworkError when the Marketplace cannot say, with a tip
    naming the ``:VERSION`` to add.
    """
    if source.plugin is None or source.plugin.version is not None:
        return source
    marketplace = _base_url(marketplace_url, "DIFY_MARKETPLACE_URL", DEFAULT_MARKETPLACE_URL)
    with ExitStack() as stack:
        http_client = stack.enter_context(make_client(timeout=timeout)) if client is None else client
        plugin = _latest(source.plugin, marketplace, http_client)
    return Source(source.text, "marketplace", plugin=plugin, filename=_marketplace_name(plugin))


def _latest(
    plugin: PluginId, marketplace: str, client: httpx.Client, *, attempts: int = 4, backoff: float = 0.5
) -> PluginId:
    """Ask ``GET {marketplace}/api/v1/plugins/{org}/{name}`` (what Dify's plugin page reads) for the latest."""
    wanted = f"{plugin.org}/{plugin.name}"
    tip = f"add the version yourself: {wanted}:VERSION, as shown on the plugin's Marketplace page or in Dify"
    url = f"{marketplace}/api/v1/plugins/{quote(plugin.org, safe='')}/{quote(plugin.name, safe='')}"
    try:
        with open_stream(client, url, attempts=attempts, backoff=backoff) as response:
            body = read_bounded(response, url, _MAX_PLUGIN_DOCUMENT)
    except StatusError as exc:
        if exc.status != 404:
            raise NetworkError(exc.message, tip=tip) from None
        raise NetworkError(
            f"{wanted}: not on the Marketplace at {marketplace} (HTTP 404), so it has no latest version", tip=tip
        ) from None
    try:
        found = json.loads(body)["data"]["plugin"]
        version, identifier = found["latest_version"], found.get("latest_package_identifier") or ""
    except (ValueError, TypeError, KeyError, RecursionError):  # nesting past Python's limit: RecursionError
        raise NetworkError(f"{url}: the answer does not name {wanted}'s latest version", tip=tip) from None
    if not isinstance(version, str) or not _PLUGIN_ID.fullmatch(f"{wanted}:{version}"):
        raise NetworkError(
            f"{url}: the latest version of {wanted} is given as {shown_line(version)}, not x.y.z", tip=tip
        )
    # That release's identifier carries the daemon's checksum: kept only when it names the same release.
    checksum = None
    match = _PLUGIN_ID.fullmatch(str(identifier))
    if (
        match
        and match["checksum"]
        and (match["org"], match["name"], match["version"]) == (plugin.org, plugin.name, version)
    ):
        checksum = match["checksum"].lower()
    return PluginId(plugin.org, plugin.name, version, checksum)


def _fetch_marketplace(plugin: PluginId, marketplace: str, get: Callable[[str], Path]) -> Path:
    assert plugin.version is not None, "the latest version is looked up first"
    quoted = "/".join(quote(part, safe="") for part in (plugin.org, plugin.name, plugin.version))
    try:
        return get(f"{marketplace}/api/v1/plugins/{quoted}/download")
    except StatusError as exc:
        if exc.status != 404:
            raise
        if plugin.checksum is None:
            raise _not_on_marketplace(plugin, marketplace) from None
    # Older marketplaces serve a package only by its full identifier, which includes the checksum.
    legacy = httpx.URL(f"{marketplace}/api/v1/plugins/download", params={"unique_identifier": str(plugin)})
    try:
        return get(str(legacy))
    except StatusError as exc:
        if exc.status != 404:
            raise
        raise _not_on_marketplace(plugin, marketplace) from None


def _check_checksum(plugin: PluginId, package: Path) -> Path:
    """The package when it is the one ``@checksum`` names (the daemon's checksum); else removed and refused."""
    if plugin.checksum is None:
        return package
    try:
        actual = zip_checksum(package)
    except PackageError:
        package.unlink(missing_ok=True)
        raise
    if actual != plugin.checksum:
        package.unlink(missing_ok=True)
        raise NetworkError(
            f"{plugin.org}/{plugin.name}:{plugin.version}: the Marketplace served a package with checksum {actual}, "
            f"not the {plugin.checksum} the identifier names",
            tip="the identifier names another build of this version: copy it again from Dify, "
            "or leave out @CHECKSUM to take the package the Marketplace serves now",
        )
    return package


def _not_on_marketplace(plugin: PluginId, marketplace: str) -> NetworkError:
    tip = "copy the identifier from the plugin's Marketplace page or from Dify's plugin list"
    if plugin.checksum is None:
        tip += "; a marketplace with only the older download API also needs its @checksum"
    return NetworkError(
        f"{plugin.org}/{plugin.name}:{plugin.version}: not on the Marketplace at {marketplace} (HTTP 404); "
        f"no plugin {plugin.org}/{plugin.name}, or no version {plugin.version} of it",
        tip=tip,
    )


def _github_tip(status: int, token: str | None) -> str:
    if token is None:
        return "set GITHUB_TOKEN for a private repository or to lift the anonymous rate limit"
    if status == 404:
        return "check the owner, repository, release tag and asset name on the release page"
    return "check that GITHUB_TOKEN is valid and may read this repository"


def _base_url(argument: str | None, variable: str, default: str) -> str:
    value = argument or os.environ.get(variable) or default
    if not value.lower().startswith(("http://", "https://")):
        origin = "the base URL argument" if argument else variable
        raise UsageError(f"{origin} is {value!r}, not an http(s):// URL")
    return value.rstrip("/")


def _same_origin(url: str, other: str) -> bool:
    a, b = httpx.URL(url), httpx.URL(other)
    return (a.scheme, a.host, a.port) == (b.scheme, b.host, b.port)

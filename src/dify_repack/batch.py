"""A batch: many sources in, each plugin version packed once, then the bundle and the DSL offline copies.

Sources may be app DSLs, which expand to the plugins of their ``dependencies``. Two sources naming the same
plugin id and version are packed once: by their identifier before any download when it is known (Marketplace
ids, DSL entries), else after reading the fetched manifest. Two different plugins that would write the same
file are an error for the second; nothing is overwritten. One failure never stops the others.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import cancel
from .bundle import LANGGENIUS, Bundle, check_bundle_path, package_manifest, write_bundle
from .dsl import AppDsl, Dependency, is_dsl_source, offline_copy_path, read_dsl, write_offline_copy
from .errors import DifyRepackError, ExitCode, Interrupted, PackageError, UsageError
from .manifest import Manifest, read_manifest
from .package import zip_checksum
from .packing import PackOptions, PackResult, check_folders, pack
from .redaction import redact
from .report import NullReporter, PrefixedReporter, Reporter
from .signing import load_private_key
from .sources import Source, fetch_source, latest_on_marketplace, parse_source
from .targets import Target
from .uvbin import require_python
from .verify import VerifyOptions, VerifyReport, require_pass, verify_package

Key = tuple[str, str]  # plugin id, version


@dataclass(frozen=True)
class BatchOptions:
    pack: PackOptions = field(default_factory=PackOptions)  # its ``check`` is set here, per plugin
    verify: VerifyOptions | None = None  # None: no replay before writing (--no-verify)
    jobs: int = 2  # plugins packed side by side
    marketplace_url: str | None = None
    github_url: str | None = None
    packages_dir: Path | None = None  # where DSL `package` entries are looked for
    bundle: Path | None = None  # also write every package into this .difybndl
    langgenius_category: bool = False  # sign langgenius plugins with category langgenius


@dataclass(frozen=True)
class BatchItem:
    """One plugin version, packed once for every source that named it (the first one was used)."""

    sources: tuple[str, ...]  # as typed, or "app.yml: dependencies[0]" for a DSL entry
    dsls: tuple[Path, ...]  # the DSLs that need it
    outcome: PackResult | DifyRepackError
    seconds: float
    identifier: str | None = None  # author/name:version@checksum of the written package
    key: Key | None = None  # plugin id and version, when known (even for a failure)

    @property
    def ok(self) -> bool:
        return isinstance(self.outcome, PackResult)


@dataclass(frozen=True)
class DslCopy:
    dsl: Path
    output: Path | None  # the offline copy, or None with the reason
    reason: str = ""


@dataclass(frozen=True)
class BatchResult:
    items: tuple[BatchItem, ...]
    copies: tuple[DslCopy, ...] = ()
    bundle: Bundle | None = None
    bundle_skipped: str = ""  # why no bundle was written though one was asked for

    @property
    def failures(self) -> tuple[DifyRepackError, ...]:
        return tuple(item.outcome for item in self.items if isinstance(item.outcome, DifyRepackError))

    @property
    def status(self) -> str:
        if self.items and len(self.failures) == len(self.items):
            return "error"
        incomplete = self.failures or self.bundle_skipped or any(copy.output is None for copy in self.copies)
        return "partial" if incomplete else "success"

    @property
    def exit_code(self) -> ExitCode:
        """0; 10 when some plugins (or outputs) failed and others succeeded; when every plugin failed, their code."""
        if self.status == "success":
            return ExitCode.OK
        if self.status == "error":
            return self.failures[0].exit_code
        return ExitCode.PARTIAL

    @property
    def settings(self) -> tuple[str, ...]:
        """What Dify needs for these uploads: the largest of each package's settings, or with a bundle its own
        signature and size settings in place of the packages' (plus what else they need, a mirror say)."""
        lines = merge_settings(
            line for item in self.items if isinstance(item.outcome, PackResult) for line in item.outcome.dify_settings
        )
        if self.bundle is None:
            return lines
        replaced = ("FORCE_VERIFYING_SIGNATURE=", "PLUGIN_MAX_PACKAGE_SIZE=", "NGINX_CLIENT_MAX_BODY_SIZE=")
        return (*self.bundle.settings, *(line for line in lines if not line.startswith(replaced)))


def merge_settings(lines: Iterable[str]) -> tuple[str, ...]:
    """One line per setting name; of several values the largest (sizes) wins."""
    chosen: dict[str, tuple[int, str]] = {}
    for line in lines:
        name, _, rest = line.partition("=")
        digits = "".join(char for char in rest.split()[0] if char.isdigit()) if rest.strip() else ""
        size = int(digits) if digits else 0
        if name not in chosen or size > chosen[name][0]:
            chosen[name] = (size, line)
    return tuple(line for _, line in chosen.values())


@dataclass
class _Request:
    text: str
    source: Source | None  # None: a DSL package entry with no file found
    key: Key | None  # known before any download
    dependency: Dependency | None = None
    missing: DifyRepackError | None = None


@dataclass
class _Job:
    requests: list[_Request]
    key: Key | None
    local: Path | None = None
    manifest: Manifest | None = None
    error: DifyRepackError | None = None
    seconds: float = 0.0

    @property
    def texts(self) -> tuple[str, ...]:
        return tuple(request.text for request in self.requests)

    @property
    def dsls(self) -> tuple[Path, ...]:
        paths = (request.dependency.dsl for request in self.requests if request.dependency is not None)
        return tuple(dict.fromkeys(paths))


def pack_many(
    sources: Sequence[Source],
    options: BatchOptions | None = None,
    reporter: Reporter | None = None,
    *,
    on_item: Callable[[BatchItem], None] | None = None,
) -> BatchResult:
    """Pack every plugin the sources name, once each; ``on_item`` sees each plugin as soon as it is done.

    Raises only for what stops the whole run before anything is written (a malformed DSL, a bad key, a bad
    bundle path, no CPython for the replays); per-plugin failures are in the result.
    """
    options = options or BatchOptions()
    reporter = reporter or NullReporter()
    if options.bundle is not None:
        check_bundle_path(options.bundle)  # before any work, not after every plugin is packed
    check_folders(options.pack)  # -o and the cache, before anything is downloaded
    if options.pack.sign_key is not None:
        load_private_key(options.pack.sign_key)  # a bad key fails now, not once per plugin
    if options.verify is not None:  # the replays need the daemon's CPython: found (or installed) before any download
        require_python(options.pack.python, reporter.step)
    dsls = [read_dsl(source.path) for source in sources if is_dsl_source(source) and source.path is not None]
    jobs = _group(_requests(sources, dsls, options, reporter))
    parallel = options.jobs > 1 and len(jobs) > 1

    def job_reporter(job: _Job) -> Reporter:
        # Plugins handled side by side share one console: their lines carry the plugin, and no live bars.
        label = f"{job.key[0]} {job.key[1]}" if job.key is not None else job.requests[0].text
        return PrefixedReporter(reporter, label) if parallel else reporter

    with (
        tempfile.TemporaryDirectory(prefix="dify-repack-sources-") as downloads,
        cancel.executor(options.jobs if parallel else 1) as pool,
    ):
        fetches = [
            pool.submit(_fetch, job, Path(downloads) / str(number), options, job_reporter(job))
            for number, job in enumerate(jobs)
        ]
        for fetched in cancel.as_completed(fetches):
            fetched.result()
        jobs = _merge_after_download(jobs)

        def run(job: _Job) -> BatchItem:
            item = _pack_job(job, options, job_reporter(job))
            if on_item is not None:
                on_item(item)
            return item

        packs = [pool.submit(run, job) for job in jobs]
        for packed in cancel.as_completed(packs):
            packed.result()
        items = tuple(packed.result() for packed in packs)
    copies = _offline_copies(dsls, items, jobs, options.pack.output_dir or Path.cwd())
    bundle, skipped = None, ""
    if options.bundle is not None:
        failed = len([item for item in items if not item.ok])
        if failed:
            skipped = f"{failed} of {len(items)} plugins failed; fix them, or bundle the packages written"
        elif not items:
            skipped = "no plugin to bundle"
        else:
            results = [item.outcome for item in items if isinstance(item.outcome, PackResult)]
            bundle = write_bundle(results, options.bundle, reporter=reporter)
    return BatchResult(items, copies, bundle, skipped)


def _requests(
    sources: Sequence[Source], dsls: Sequence[AppDsl], options: BatchOptions, reporter: Reporter
) -> list[_Request]:
    by_path = {dsl.path: dsl for dsl in dsls}
    shelf: dict[Key, list[Path]] | None = None
    requests = []
    for source in sources:
        dsl = by_path.get(source.path) if source.path is not None and is_dsl_source(source) else None
        if dsl is None:
            plugin = source.plugin
            # A Marketplace id without a version means its latest: known only once asked.
            key = (f"{plugin.org}/{plugin.name}", plugin.version) if plugin and plugin.version else None
            requests.append(_Request(redact(source.text), source, key))  # a URL source may carry a login
            continue
        if not dsl.dependencies:
            reporter.warn(f"{dsl.path}: lists no plugin dependencies (DSL {dsl.version})")
        for dependency in dsl.dependencies:
            request = _Request(dependency.where, dependency.source, dependency.key, dependency)
            if dependency.kind == "package":
                if shelf is None:
                    shelf = _shelf(options.packages_dir, reporter)
                request.source, request.missing = _from_shelf(shelf, dependency, options.packages_dir)
            requests.append(request)
    return requests


def _shelf(directory: Path | None, reporter: Reporter) -> dict[Key, list[Path]]:
    """The packages in ``--packages-dir`` by plugin id and version, read from their manifests."""
    shelf: dict[Key, list[Path]] = {}
    if directory is None:
        return shelf
    if not directory.is_dir():
        raise UsageError(f"--packages-dir {directory}: not a directory")
    for path in sorted(directory.glob("*.difypkg")):
        try:
            manifest = package_manifest(path)
        except DifyRepackError as exc:
            reporter.warn(f"{path}: skipped: {exc.message}")
            continue
        shelf.setdefault((manifest.plugin_id, manifest.version), []).append(path)
    return shelf


def _from_shelf(
    shelf: dict[Key, list[Path]], dependency: Dependency, directory: Path | None
) -> tuple[Source | None, DifyRepackError | None]:
    candidates = shelf.get(dependency.key, [])
    if not candidates:
        where = f"in {directory}" if directory is not None else "(no --packages-dir given)"
        return None, UsageError(
            f"{dependency.where}: {dependency.plugin} was installed from a package file; supply that file: "
            f"no {dependency.key[0]} {dependency.key[1]} .difypkg {where}",
            tip="put the plugin's .difypkg in a folder and pass it with --packages-dir DIR",
        )
    # Of several files of one version, the one the app was exported with.
    exact = [path for path in candidates if len(candidates) > 1 and zip_checksum(path) == dependency.plugin.checksum]
    return parse_source(str((exact or candidates)[0])), None


def _group(requests: list[_Request]) -> list[_Job]:
    """One job per plugin version known before download; every other source is a job of its own for now."""
    jobs: list[_Job] = []
    by_key: dict[Key, _Job] = {}
    for request in requests:
        if request.key is not None and request.key in by_key:
            by_key[request.key].requests.append(request)
            continue
        job = _Job([request], request.key)
        jobs.append(job)
        if request.key is not None:
            by_key[request.key] = job
    return jobs


def _fetch(job: _Job, dest: Path, options: BatchOptions, reporter: Reporter) -> None:
    """Download the job's first usable source and read its manifest; a failure is kept on the job."""
    started = time.monotonic()
    try:
        request = next((request for request in job.requests if request.source is not None), None)
        if request is None or request.source is None:
            missing = job.requests[0].missing
            assert missing is not None, "a request without a source says what is missing"
            raise missing
        source = request.source
        if source.plugin is not None and source.plugin.version is None:
            source = latest_on_marketplace(source, marketplace_url=options.marketplace_url)
            reporter.step(f"{source.text}: the latest version on the Marketplace is {source.plugin}")
        if source.path is None:
            reporter.step(f"downloading {redact(source.text)}")
        job.local = fetch_source(source, dest, marketplace_url=options.marketplace_url, github_url=options.github_url)
        shown = request.text if source.path is None else None  # a download is named as typed, not by its temp path
        job.manifest = package_manifest(job.local, shown_as=shown) if job.local.is_file() else read_manifest(job.local)
        found = (job.manifest.plugin_id, job.manifest.version)
        if job.key is not None and found != job.key:
            raise PackageError(
                f"{request.text}: the package is {found[0]} {found[1]}, not the {job.key[0]} {job.key[1]} it was named as"
            )
    except Interrupted:
        raise
    except DifyRepackError as exc:
        job.error = exc
    job.seconds = time.monotonic() - started


def _merge_after_download(jobs: list[_Job]) -> list[_Job]:
    """Merge jobs that turned out to be the same plugin version; refuse a second plugin on the same file."""
    merged: list[_Job] = []
    by_key: dict[Key, _Job] = {}
    by_file: dict[str, _Job] = {}
    for job in jobs:
        if job.manifest is None or job.error is not None:
            merged.append(job)
            continue
        key = (job.manifest.plugin_id, job.manifest.version)
        if key in by_key:
            by_key[key].requests += job.requests
            continue
        filename = job.manifest.offline_filename
        if filename in by_file:
            other = by_file[filename]
            job.error = UsageError(
                f"{job.texts[0]}: {key[0]} {key[1]} would write {filename}, which {other.texts[0]} writes too; "
                "refusing to overwrite it",
                tip="pack one of them in another run with another -o DIR",
            )
        else:
            by_key[key], by_file[filename] = job, job
        merged.append(job)
    return merged


def _pack_job(job: _Job, options: BatchOptions, reporter: Reporter) -> BatchItem:
    if job.error is not None or job.local is None or job.manifest is None:
        assert job.error is not None
        return BatchItem(job.texts, job.dsls, job.error, job.seconds, key=job.key)
    verify_options = options.verify

    def check(staged: Path, _manifest: Manifest, targets: tuple[Target, ...]) -> VerifyReport:
        assert verify_options is not None
        arches = [target.arch for target in targets]
        report = verify_package(staged, dataclasses.replace(verify_options, arches=arches), reporter)
        require_pass(report)
        return report

    category = options.pack.sign_category
    if options.langgenius_category and job.manifest.author == LANGGENIUS:
        category = LANGGENIUS
    used = next(request.source for request in job.requests if request.source is not None)
    pack_options = dataclasses.replace(
        options.pack,
        check=check if verify_options is not None else None,
        sign_category=category,
        origin=used.text,  # errors name the source as typed, not the download's temp path
    )
    started = time.monotonic()
    identifier = None
    try:
        result: PackResult | DifyRepackError = pack(job.local, pack_options, reporter)
        assert isinstance(result, PackResult)
        identifier = result.identifier
    except Interrupted:
        raise
    except DifyRepackError as exc:
        result = exc
    key = (job.manifest.plugin_id, job.manifest.version)
    return BatchItem(job.texts, job.dsls, result, job.seconds + time.monotonic() - started, identifier, key)


def _offline_copies(
    dsls: Sequence[AppDsl], items: Sequence[BatchItem], jobs: Sequence[_Job], output_dir: Path
) -> tuple[DslCopy, ...]:
    """For each DSL whose plugins were all packed, a copy naming the new packages; else why there is none."""
    by_entry: dict[tuple[Path, int], BatchItem] = {}
    for job, item in zip(jobs, items, strict=True):
        for request in job.requests:
            if request.dependency is not None:
                by_entry[(request.dependency.dsl, request.dependency.index)] = item
    copies: list[DslCopy] = []
    written: dict[Path, Path] = {}
    for dsl in dsls:
        items_of = {dependency.index: by_entry[(dsl.path, dependency.index)] for dependency in dsl.dependencies}
        failed = [dsl.dependencies[index].where for index, item in items_of.items() if item.identifier is None]
        target = offline_copy_path(dsl, output_dir)
        if failed:
            more = f" and {len(failed) - 1} more" if len(failed) > 1 else ""
            copies.append(DslCopy(dsl.path, None, f"not every plugin it needs was packed: {failed[0]}{more}"))
        elif target in written:
            copies.append(DslCopy(dsl.path, None, f"{target} is already the copy of {written[target]}"))
        else:
            identifiers = {index: item.identifier for index, item in items_of.items() if item.identifier}
            try:
                copies.append(DslCopy(dsl.path, write_offline_copy(dsl, identifiers, target)))
                written[target] = dsl.path
            except DifyRepackError as exc:
                copies.append(DslCopy(dsl.path, None, exc.message))
    return tuple(copies)

"""Human output of the CLI: summaries and tables with rich, and the JSON shape of pack results."""

from __future__ import annotations

import sys
from datetime import datetime, timezone

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .daemon import PROFILES
from .errors import DifyRepackError
from .inspect import Inspection
from .packing import API_DEFAULT_LIMIT, DAEMON_DEFAULT_LIMIT, PackResult
from .verify import Step, VerifyReport

PIN_CHANGES_SHOWN = 10  # the summary lists this many changed pins; --json has them all


def console() -> Console:
    # Tables wide enough to read in a CI log too, where rich would otherwise assume 80 columns.
    return Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 140)


def mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


def pack_json(text: str, outcome: PackResult | DifyRepackError, seconds: float) -> dict[str, object]:
    if isinstance(outcome, DifyRepackError):
        return {
            "source": text,
            "status": "error",
            "error": outcome.message,
            "tip": outcome.tip,
            "exit_code": int(outcome.exit_code),
        }
    return {
        "source": text,
        "status": "success",
        "output": str(outcome.output),
        "plugin": outcome.manifest.plugin_id,
        "version": outcome.manifest.version,
        "identifier": outcome.identifier,
        "targets": [str(target) for target in outcome.targets],
        "dependency_source": outcome.dependency_source,
        "packages": outcome.packages,
        "wheels": outcome.wheels,
        "built_from_sdist": list(outcome.built),
        "compressed_bytes": outcome.stats.compressed_bytes,
        "uncompressed_bytes": outcome.stats.uncompressed_bytes,
        "signed": outcome.signed,
        "verification": None
        if outcome.verification is None
        else {
            "isolation": outcome.verification.isolation,
            "checks": len(outcome.verification.checks),
            "ok": outcome.verification.ok,
            "remembered": outcome.verification.remembered or None,
            "warnings": list(outcome.verification.warnings),
        },
        "notes": list(outcome.notes),
        "license_attention": list(outcome.license_attention),
        "pin_changes": [
            {"name": c.name, "declared": c.declared, "shipped": c.shipped, "where": c.where}
            for c in outcome.pin_changes
        ],
        "dify_settings": list(outcome.dify_settings),
        "wheelhouse": None if outcome.wheelhouse is None else str(outcome.wheelhouse),
        "mirror_url": outcome.mirror_url,  # set for a slim package
        "seconds": round(seconds, 2),
    }


def print_pack_result(result: PackResult) -> None:
    out = console()
    out.print(f"[bold green]wrote[/] {escape(str(result.output))}")
    out.print(f"  plugin    {result.manifest.plugin_id} {result.manifest.version}")
    out.print(f"  targets   {', '.join(map(str, result.targets))}")
    built = f"; built from sdists: {', '.join(result.built)}" if result.built else ""
    out.print(f"  deps      {result.packages} packages from {result.dependency_source}, {result.wheels} wheels{built}")
    out.print(
        f"  size      {mib(result.stats.compressed_bytes)} zipped, {mib(result.stats.uncompressed_bytes)} unpacked"
    )
    out.print(f"  signed    {'yes' if result.signed else 'no'}")
    report = result.verification
    if report is not None:
        same = sum(bool(check.same_as) for check in report.checks)
        identical = f", {same} of them identical to another" if same else ""
        when = f"; remembered from {report.remembered}, same files" if report.remembered else ""
        out.print(f"  verified  {report.counts} passed{identical} (network cut by {report.isolation}{when})")
    else:
        out.print("  verified  [yellow]skipped (--no-verify)[/]: run `dify-repack verify` before carrying it across")
    for note in result.notes:
        out.print(f"  note      {note}", markup=False)
    for line in result.license_attention:
        out.print(f"  [bold yellow]license[/]   {escape(line)}")
    for change in result.pin_changes[:PIN_CHANGES_SHOWN]:
        out.print(
            f"  changed   {change.name} {change.declared} → {change.shipped} (pinned in {change.where})", markup=False
        )
    if len(result.pin_changes) > PIN_CHANGES_SHOWN:
        out.print(f"  changed   … and {len(result.pin_changes) - PIN_CHANGES_SHOWN} more pins (--json lists all)")
    out.print("Dify settings for this upload:" if result.dify_settings else "Dify settings: the defaults accept it.")
    for setting in result.dify_settings:
        out.print(f"  {setting}", markup=False)


_LIVE_STEPS = ("venv", "install", "compile", "import", "start")


def step_cell(step: Step) -> str:
    state = "[green]ok[/]" if step.ok else "[bold red]FAIL[/]" if step.fatal else "[yellow]warn[/]"
    return f"{state} same" if step.same_as else f"{state} {step.seconds:.1f}s"


def print_verify_report(report: VerifyReport) -> None:
    out = console()
    out.print(f"{escape(report.identifier)}  (network cut by: {report.isolation})")
    table = Table()
    for column in ("profile", "uv", "target", "mode", *_LIVE_STEPS, "result"):
        table.add_column(column, no_wrap=True)
    for check in report.checks:
        by_name = {step.name: step for step in check.steps}
        if check.mode == "live":
            cells = [step_cell(by_name[name]) if name in by_name else "-" for name in _LIVE_STEPS]
        else:  # static checks resolve instead of installing: show them in the install column
            cells = ["-", "  ".join(f"{step.name} {step_cell(step)}" for step in check.steps), "-", "-", "-"]
        result = "[green]ok[/]" if check.ok else "[bold red]FAIL[/]"
        if check.same_as:
            result += f" (same as {check.same_as})"
        table.add_row(check.profile, check.uv, check.target.removeprefix("cp312-linux-"), check.mode, *cells, result)
    out.print(table)
    shared: dict[str, list[str]] = {}
    for check in report.checks:
        owner = next((step.same_as for step in check.steps if step.same_as), "")
        if owner and not check.same_as:
            shared.setdefault(owner, []).append(f"{check.profile} {check.uv}")
    for owner, followers in shared.items():
        out.print(
            f"same: {', '.join(followers)} installed byte-identical files to {owner}'s (uv's RECORD and "
            f"uv_cache.json aside), so import and start ran once, there",
            markup=False,
        )
    for check in report.checks:
        for step in check.steps:
            if not step.ok and step.detail and not check.same_as and not step.same_as:
                out.print(
                    f"[bold]{check.profile} / {check.uv} / {check.target} — {step.name}:[/] `{escape(check.command)}`"
                )
                out.print(step.detail, markup=False)
    for note in report.notes:
        out.print(f"[bold yellow]note:[/] {escape(note)}")
    for warning in report.warnings:
        out.print(f"[bold yellow]warning:[/] {escape(warning)}")
    if report.remembered:
        out.print(f"remembered: a package with these same files passed these checks on {report.remembered}")
    verdict = "every check passed" if report.ok else "some checks FAILED: this package would not install offline"
    out.print(("[bold green]" if report.ok else "[bold red]") + verdict + "[/]")


def print_inspection(result: Inspection) -> None:
    manifest = result.manifest
    out = console()
    out.print(f"[bold]{escape(result.identifier)}[/]")
    out.print(
        f"manifest    arch {', '.join(manifest.arches)}; runner python {escape(manifest.runner_version)} "
        f"(the daemon always makes a 3.12 venv), entrypoint {escape(manifest.entrypoint)}"
    )
    if result.signed:
        signed_at = datetime.fromtimestamp(result.signature_time or 0, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        key_check = {
            None: "not checked (give --key PUBLIC.pem)",
            True: "[green]verified[/] with the given key",
            False: "[bold red]NOT verified[/] with the given key",
        }[result.verified]
        out.print(f"signature   signed {signed_at}, category {escape(result.category or 'none')}; {key_check}")
    else:
        out.print("signature   unsigned")
    out.print(
        f"size        {result.files} files, {mib(result.compressed_bytes)} zipped, "
        f"{mib(result.uncompressed_bytes)} unpacked (defaults: {mib(API_DEFAULT_LIMIT)} zipped at the API, "
        f"{mib(DAEMON_DEFAULT_LIMIT)} zipped and unpacked at the daemon)"
    )
    out.print(f"dependency  {escape(', '.join(result.dependency_files) or 'none')}")
    folders = ", ".join(f"{folder}/" for folder in result.wheel_dirs)
    sdists = f", {len(result.sdists)} sdists" if result.sdists else ""
    out.print(f"wheels      {len(result.wheels)} in {escape(folders)}{sdists}" if result.wheels else "wheels      none")
    for target in result.targets:
        if "requirements.txt" not in result.dependency_files:
            status = "no requirements.txt pins to check"
        elif target.missing:
            shown = ", ".join(target.missing[:5]) + (
                f" and {len(target.missing) - 5} more" if len(target.missing) > 5 else ""
            )
            status = f"[red]no wheel for {escape(shown)}[/]"
        else:
            status = "every requirements.txt pin has one"
        out.print(f"  {target.target}: {len(target.wheels)} wheels install; {status}")
    if result.problems:
        out.print("[bold yellow]problems[/]")
        for problem in result.problems:
            out.print(f"  - {escape(problem)}")
    out.print("[bold]daemon profiles[/] (static prediction; `dify-repack verify PACKAGE` is the proof)")
    explained: dict[tuple[str, ...], str] = {}
    for verdict in result.verdicts:
        mark = "[green]ok  [/]" if verdict.ok else "[bold red]FAIL[/]"
        daemon = PROFILES[verdict.profile].split(":")[0]
        out.print(f"  {mark}  {verdict.profile:<15} {escape(daemon)} runs: {escape(verdict.command)}")
        if verdict.reasons and verdict.reasons in explained:
            out.print(f"          same reasons as {explained[verdict.reasons]}")
            continue
        explained.setdefault(verdict.reasons, verdict.profile)
        for reason in verdict.reasons:
            out.print(f"          {escape(reason)}")
    if result.settings:
        out.print("[bold]Dify settings this upload needs[/]")
        for line in result.settings:
            out.print(f"  {escape(line)}")

"""The review report: one self-contained HTML file (no script, no external asset) that reads offline and prints.

It says what a security reviewer asks before anything crosses the air gap: the identifier the daemon will compute,
the signature, what was verified and how, the sizes and the Dify settings, every wheel with version, license,
size and hash, what the packing changed, and how to check the package again on the other side.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timezone
from html import escape

from . import __version__
from .bundle import Bundle
from .dossier import PluginDossier, WheelEntry
from .redaction import redact

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;color:#1d2430;margin:2rem auto;max-width:72rem;padding:0 1rem}
h1{font-size:1.6rem;margin-bottom:.2rem}h2{margin-top:2.2rem;border-bottom:2px solid #d8dee9;padding-bottom:.2rem}
h3{margin-top:1.4rem}table{border-collapse:collapse;width:100%;margin:.5rem 0}
th,td{border:1px solid #d8dee9;padding:.25rem .45rem;text-align:left;vertical-align:top}
th{background:#eef2f7}code,.hash{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:12px}
.hash{word-break:break-all}.ok{color:#176f2c;font-weight:600}.fail{color:#b3261e;font-weight:600}
.flag{background:#fff4ce;border:1px solid #e0b400;padding:0 .3rem;border-radius:3px}
.muted{color:#5b6573}pre{background:#f5f7fa;border:1px solid #d8dee9;padding:.6rem;overflow-x:auto}
svg text{font:12px system-ui,sans-serif}
@media print{body{margin:0;max-width:none}h2{break-before:page}details{display:block}a{color:inherit}}
"""
_CHART_BARS = 15


def report_html(dossiers: Sequence[PluginDossier], *, bundle: Bundle | None = None, bundle_sha256: str = "") -> str:
    """The report for one plugin, for every plugin of one transfer, or for a bundle (whose file hashes to
    ``bundle_sha256``) and its plugins."""
    if bundle is not None:
        title = f"Transfer dossier: bundle {bundle.path.name} ({len(dossiers)} plugins)"
    elif len(dossiers) == 1:
        title = (
            f"Transfer dossier: {dossiers[0].inspection.manifest.plugin_id} {dossiers[0].inspection.manifest.version}"
        )
    else:
        title = f"Transfer dossier: {len(dossiers)} Dify plugins"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="muted">Written by dify-repack {escape(__version__)} from the package files themselves: '
        "every hash and size below is of the bytes that are shipped.</p>",
    ]
    if bundle is not None:
        parts.append(_bundle_header(bundle, bundle_sha256))
    if len(dossiers) > 1 or bundle is not None:
        parts.append(_summary_table(dossiers))
    for dossier in dossiers:
        parts.append(_plugin_section(dossier, heading="h2"))
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _bundle_header(bundle: Bundle, sha256: str) -> str:
    rows = [
        ("bundle file", bundle.path.name),
        ("bundle sha256", sha256),
        ("size", _mib(bundle.size)),
        ("packages", ", ".join(entry.identifier for entry in bundle.entries)),
    ]
    cells = "".join(f'<tr><th>{escape(k)}</th><td class="hash">{escape(v)}</td></tr>' for k, v in rows)
    settings = "\n".join(bundle.settings) or "none beyond Dify's defaults"
    check = f"dify-repack inspect {bundle.path.name}\ndify-repack verify {bundle.path.name}"
    return (
        f"<table>{cells}</table><h3>Dify settings for the bundle upload</h3><pre>{escape(settings)}</pre>"
        f"<h3>How to check the bundle on the other side</h3><pre>{escape(check)}</pre>"
    )


def _summary_table(dossiers: Sequence[PluginDossier]) -> str:
    rows = "".join(
        f"<tr><td>{escape(d.inspection.manifest.plugin_id)}</td><td>{escape(d.inspection.manifest.version)}</td>"
        f'<td class="hash">{escape(d.inspection.identifier)}</td><td>{_mib(d.inspection.compressed_bytes)}</td>'
        f"<td>{_verified_cell(d)}</td><td>{'yes' if d.inspection.signed else 'no'}</td></tr>"
        for d in dossiers
    )
    return (
        "<table><tr><th>plugin</th><th>version</th><th>identifier</th><th>size</th><th>verified</th>"
        f"<th>signed</th></tr>{rows}</table>"
    )


def _plugin_section(dossier: PluginDossier, *, heading: str) -> str:
    inspection = dossier.inspection
    manifest = inspection.manifest
    name = inspection.package.name
    signature = "unsigned"
    if inspection.signed:
        when = (
            datetime.fromtimestamp(inspection.signature_time, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            if inspection.signature_time
            else "unknown time"
        )
        signature = f"signed {when}, category {inspection.category or 'none'}"
    identity = [
        ("plugin", manifest.plugin_id),
        ("version", manifest.version),
        ("identifier (as the daemon computes it)", inspection.identifier),
        ("checksum", inspection.checksum),
        ("package file", name),
        ("package sha256", dossier.sha256),
        ("signature", signature),
        ("size", f"{_mib(inspection.compressed_bytes)} zipped, {_mib(inspection.uncompressed_bytes)} unpacked"),
        ("targets", ", ".join(target.target for target in inspection.targets)),
        ("files", f"{inspection.files} ({len(dossier.wheels)} wheels)"),
    ]
    rows = "".join(f'<tr><th>{escape(k)}</th><td class="hash">{escape(v)}</td></tr>' for k, v in identity)
    parts = [
        f"<{heading}>{escape(manifest.plugin_id)} {escape(manifest.version)}</{heading}>",
        f"<table>{rows}</table>",
    ]
    parts.append("<h3>Dify settings for this upload</h3>")
    settings = "\n".join(inspection.settings) or "none beyond Dify's defaults"
    parts.append(f"<pre>{escape(settings)}</pre>")
    parts.append("<h3>Verification</h3>")
    parts.append(_verification(dossier))
    attention = dossier.attention
    parts.append("<h3>Licenses that need a reviewer's attention</h3>")
    if attention:
        items = "".join(
            f"<li><b>{escape(w.name)} {escape(w.version)}</b>: {escape(str(w.license))} — "
            f'<span class="flag">{escape(w.license.attention or "")}</span></li>'
            for w in attention
        )
        parts.append(f"<ul>{items}</ul>")
    else:
        parts.append("<p>None: every wheel declares a license outside the GPL family.</p>")
    if dossier.wheels:
        parts.append("<h3>Size by dependency</h3>")
        parts.append(_size_chart(dossier.wheels))
    parts.append("<h3>Wheels</h3>")
    parts.append(_wheel_table(dossier.wheels))
    parts.append("<h3>What packing changed</h3>")
    if dossier.notes or inspection.problems:
        items = "".join(f"<li>{escape(redact(note))}</li>" for note in (*dossier.notes, *inspection.problems))
        parts.append(f"<ul>{items}</ul>")
    else:
        parts.append("<p>No notes.</p>")
    own = dossier.plugin_files
    file_rows = "".join(
        f'<tr><td><code>{escape(f.path)}</code></td><td>{f.size}</td><td class="hash">{f.sha256}</td></tr>' for f in own
    )
    parts.append(
        f"<h3>The plugin's own files ({len(own)})</h3><details open><summary>paths, sizes, sha256</summary>"
        f"<table><tr><th>path</th><th>bytes</th><th>sha256</th></tr>{file_rows}</table></details>"
    )
    parts.append("<h3>How to check this package on the other side</h3>")
    commands = [
        f"sha256sum {name}   # {dossier.sha256}",
        f"dify-repack inspect {name}   # identifier {inspection.identifier}",
    ]
    if inspection.signed:
        commands.append(f"dify-repack verify-signature {name} --key YOUR-KEY.public.pem")
    commands.append(f"dify-repack verify {name}   # replays the daemon's install with the network cut off")
    parts.append(f"<pre>{escape(chr(10).join(commands))}</pre>")
    return "\n".join(parts)


def _verified_cell(dossier: PluginDossier) -> str:
    if dossier.verification is None:
        return "not in this run"
    return '<span class="ok">passed</span>' if dossier.verification.ok else '<span class="fail">failed</span>'


def _verification(dossier: PluginDossier) -> str:
    report = dossier.verification
    if report is None:
        return (
            "<p>Not verified in this run. Replay every daemon install offline with "
            f"<code>dify-repack verify {escape(dossier.inspection.package.name)}</code>.</p>"
        )
    steps = list(dict.fromkeys(step.name for check in report.checks for step in check.steps))
    head = "".join(f"<th>{escape(step)}</th>" for step in steps)
    rows = []
    for check in report.checks:
        by_name = {step.name: step for step in check.steps}
        cells = []
        for name in steps:
            step = by_name.get(name)
            if step is None:
                cells.append("<td></td>")
            else:
                css = "ok" if step.ok else "fail"
                title = f' title="{escape(step.detail)}"' if step.detail else ""
                cells.append(f'<td class="{css}"{title}>{"ok" if step.ok else "failed"} {step.seconds:.1f} s</td>')
        result = '<span class="ok">ok</span>' if check.ok else '<span class="fail">failed</span>'
        rows.append(
            f"<tr><td>{escape(check.profile)}</td><td>{escape(check.uv)}</td><td>{escape(check.target)}</td>"
            f"<td>{escape(check.mode)}</td>{''.join(cells)}<td>{result}</td></tr>"
        )
    verdict = '<span class="ok">passed</span>' if report.ok else '<span class="fail">failed</span>'
    return (
        f"<p>{verdict}; network cut by <code>{escape(report.isolation)}</code>.</p>"
        f"<table><tr><th>profile</th><th>uv</th><th>target</th><th>mode</th>{head}<th>result</th></tr>"
        f"{''.join(rows)}</table>"
    )


def _wheel_table(wheels: Sequence[WheelEntry]) -> str:
    rows = []
    for wheel in wheels:
        flag = f' <span class="flag">{escape(wheel.license.attention)}</span>' if wheel.license.attention else ""
        if wheel.provenance is None:
            origin = "not recorded"
        elif wheel.provenance.built:
            origin = f"built here from {escape(redact(wheel.provenance.url))}"
        else:
            origin = escape(redact(wheel.provenance.url))
        rows.append(
            f"<tr><td>{escape(wheel.name)}</td><td>{escape(wheel.version)}</td>"
            f"<td>{escape(str(wheel.license))}{flag}</td><td>{_mib(wheel.size)}</td>"
            f'<td class="hash">{wheel.sha256}</td><td>{escape(", ".join(wheel.targets))}</td>'
            f'<td class="hash">{origin}</td></tr>'
        )
    return (
        "<table><tr><th>name</th><th>version</th><th>license</th><th>size</th><th>sha256</th><th>targets</th>"
        f"<th>source</th></tr>{''.join(rows)}</table>"
    )


def _size_chart(wheels: Sequence[WheelEntry]) -> str:
    """Horizontal bars of shipped bytes per project (all its wheels), largest first: an inline SVG."""
    totals: dict[str, int] = {}
    for wheel in wheels:
        totals[wheel.name] = totals.get(wheel.name, 0) + wheel.size
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    bars = ranked[:_CHART_BARS]
    rest = ranked[_CHART_BARS:]
    if rest:
        bars.append((f"{len(rest)} others", sum(size for _, size in rest)))
    largest = max(size for _, size in bars) or 1
    row, label_width, bar_width = 20, 190, 520
    height = row * len(bars) + 10
    items = []
    for index, (name, size) in enumerate(bars):
        y = index * row + 5
        width = max(1, round(bar_width * size / largest))
        items.append(
            f'<text x="{label_width - 6}" y="{y + 13}" text-anchor="end">{escape(name)}</text>'
            f'<rect x="{label_width}" y="{y + 2}" width="{width}" height="{row - 6}" fill="#4c78a8"/>'
            f'<text x="{label_width + width + 5}" y="{y + 13}">{_mib(size)}</text>'
        )
    return (
        f'<svg role="img" aria-label="shipped size by dependency" width="{label_width + bar_width + 90}" '
        f'height="{height}">{"".join(items)}</svg>'
    )


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB" if size >= 102.4 * 1024 else f"{size / 1024:.1f} KiB"

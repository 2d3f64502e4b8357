"""Benchmark dify-repack's ``pack`` against the classic ``pip download`` + zip, on one machine in one run.

Sections (each prints rows of one table; ``--json FILE`` writes the raw figures), one module each:
  1. cold ``pack`` of the example plugin (fresh cache), no verification            pack_bench.py
  1b. the example's full default verification (``--with-verify``)                 verify_bench.py
  2. the classic approach for the same plugin and the same targets                 classic_bench.py
  3. warm ``pack`` (same cache again), with the share of the zip write             pack_bench.py
  4. a batch over a corpus folder with one shared cache, and the bytes saved       corpus_bench.py
  5. peak memory, and a streaming check of ``write_package`` / ``extract_package``  memory_bench.py
  6. the CLI: cold and warm ``pack`` with verification (``--with-verify``), ``--version``  cli_bench.py

Run: .venv/bin/python bench/bench.py --corpus /work/shared/corpus --with-verify --json /tmp/bench-results.json
     .venv/bin/python bench/bench.py --only verify --only cli --repeat 3   # the verification figures only
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
from pathlib import Path

from rich.console import Console

from classic_bench import ClassicRun, classic_once, classic_section, make_pip
from cli_bench import bench_cli
from common import DEFAULT_EXAMPLE, Section, host_info, max_rss_bytes, median_run, print_table
from corpus_bench import bench_corpus
from dify_repack.packing import PackOptions
from memory_bench import bench_streaming, memory_section
from pack_bench import PackRun, bench_warm, cold_section, timed_pack
from verify_bench import bench_verify

SECTIONS = ("pack", "classic", "verify", "corpus", "memory", "cli")

# --------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--example", type=Path, default=DEFAULT_EXAMPLE, help="plugin for sections 1-3 (default: %(default)s)"
    )
    parser.add_argument("--corpus", type=Path, help="folder of corpus plugins (data files only) for section 4")
    parser.add_argument("--json", type=Path, help="write the raw figures to this file")
    parser.add_argument(
        "--repeat",
        type=int,
        default=3,
        help="rounds of cold pack and classic pip; medians are reported (default: %(default)s)",
    )
    parser.add_argument("--skip-classic", action="store_true", help="skip section 2 (pip download + zip)")
    parser.add_argument("--skip-corpus", action="store_true", help="skip section 4 even with --corpus")
    parser.add_argument(
        "--with-verify", action="store_true", help="also time verification (sections 1b and 6's cold/warm pack)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        help="run only these sections (repeatable; 'verify' and 'cli' imply --with-verify)",
    )
    parser.add_argument(
        "--big-mb", type=int, default=512, help="size of the streaming check's file in MiB (default: %(default)s)"
    )
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.big_mb < 1:
        parser.error("--repeat and --big-mb must be at least 1")
    return args


def run_all(args: argparse.Namespace, work: Path, console: Console) -> list[Section]:
    sections: list[Section] = []
    snapshots: list[tuple[str, int, int]] = []
    chosen = set(args.only or SECTIONS)
    verify = args.with_verify or bool({"verify", "cli"} & set(args.only or ()))

    def done(section: Section, label: str | None) -> None:
        sections.append(section)
        if label is not None:  # max RSS is a high-water mark: a snapshot says which stage raised it
            snapshots.append((label, max_rss_bytes(resource.RUSAGE_SELF), max_rss_bytes(resource.RUSAGE_CHILDREN)))
        console.print(f"[dim]… {section.title} done[/]")

    # Rounds alternate pack and pip so that a change in network conditions hits both sides alike.
    pip = make_pip(work) if "classic" in chosen and not args.skip_classic else None
    colds: list[PackRun] = []
    classics: list[ClassicRun] = []
    rounds = args.repeat if {"pack", "classic"} & chosen else 1
    for index in range(rounds):
        cache = work / f"cache-cold-{index}"
        colds.append(timed_pack(args.example, PackOptions(output_dir=work / f"out-cold-{index}", cache_dir=cache)))
        if pip is not None:
            arches = tuple(target.arch for target in colds[-1].result.targets)
            classics.append(classic_once(pip[0], args.example, arches, work / f"classic-{index}"))
    if "pack" in chosen:
        done(cold_section(colds, cache), "cold pack" if pip is None else "cold pack + classic pip rounds")
    if pip is not None:
        pack_seconds = median_run(colds, lambda run_: run_.seconds).seconds
        done(classic_section(classics, pip[1], arches, pack_seconds), None)
    if "pack" in chosen:
        done(bench_warm(args.example, work, cache), "warm pack")
    if verify and "verify" in chosen:
        done(bench_verify(colds[-1].result.output, cache, args.repeat), "verification")
    if args.corpus and not args.skip_corpus and "corpus" in chosen:
        done(bench_corpus(args.corpus, work), "corpus batch")
    if "memory" in chosen:
        done(bench_streaming(args.big_mb, work), "streaming check")
    if verify and "cli" in chosen:
        done(bench_cli(args.example, work, args.repeat), "command line")
    if snapshots:
        sections.append(memory_section(snapshots))
    return sections


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(highlight=False, soft_wrap=True)
    with tempfile.TemporaryDirectory(prefix="dify-repack-bench-") as temp:
        sections = run_all(args, Path(temp), console)
    print_table(sections, console)
    streaming = next((section for section in sections if section.title == "5b streaming"), None)
    if args.json:
        payload = {
            "command": [Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])],
            "host": host_info(),
            "sections": {section.title: section.data for section in sections},
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        console.print(f"wrote {args.json}")
    return 0 if streaming is None or streaming.data["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())

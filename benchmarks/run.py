"""Run the benchmarks, print the table, write JSON and Markdown: ``python -m benchmarks.run
[--quick] [--out PREFIX] [--threads N] [--clock wall|cpu] [--only 1,3] [--profile]
[--render JSON]``."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks.workloads import FULL, QUICK, REPO, Sizes

ITEMS = (1, 2, 3, 4, 5, 6, 7)
ANALYSIS = REPO / "benchmarks" / "analysis.md"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (seconds; the smoke test); numbers mean nothing")
    parser.add_argument("--out", default=None, metavar="PREFIX",
                        help="write PREFIX.json and PREFIX.md (default: benchmarks/results.json "
                             "and BENCHMARKS.md; with --quick: in the temporary folder)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads, 0 = torch's default (default 1: on a "
                             "shared CPU a multi-thread pool waits on busy cores)")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="time with the wall clock (default) or this process's CPU time, "
                             "which other jobs on a shared machine do not inflate")
    parser.add_argument("--only", default=None, metavar="LIST",
                        help="comma-separated benchmark numbers to run (default: all)")
    parser.add_argument("--profile", action="store_true",
                        help="profile every benchmark, not only those that miss their target")
    parser.add_argument("--render", default=None, metavar="JSON",
                        help="measure nothing: rewrite the Markdown (and print the table) from a "
                             "saved results JSON, e.g. after editing benchmarks/analysis.md")
    args = parser.parse_args(argv)
    if args.threads < 0:
        parser.error(f"--threads must be >= 0, got {args.threads}")
    if args.only is None:
        args.only = list(ITEMS)
    else:
        try:
            args.only = sorted({int(part) for part in args.only.split(",") if part.strip()})
        except ValueError:
            parser.error(f"--only must list benchmark numbers like 1,3, got {args.only!r}")
        unknown = [n for n in args.only if n not in ITEMS]
        if unknown or not args.only:
            parser.error(f"--only: unknown benchmark number(s) {unknown}; known: {list(ITEMS)}")
    return args


def output_paths(out: str | None, quick: bool) -> tuple[Path, Path]:
    """Where the JSON and the Markdown go."""
    if out is None:
        if quick:
            prefix = Path(tempfile.gettempdir()) / "icm-benchmarks-quick"
            return prefix.with_suffix(".json"), prefix.with_suffix(".md")
        return REPO / "benchmarks" / "results.json", REPO / "BENCHMARKS.md"
    prefix = Path(out)
    return prefix.with_name(prefix.name + ".json"), prefix.with_name(prefix.name + ".md")


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def run(sizes: Sizes, threads: int, only: Sequence[int], profile: bool) -> list[dict[str, Any]]:
    """Run the chosen benchmarks in order; each returns its result record."""
    from benchmarks import sdr_speed, training
    from benchmarks.scaling import sdr_scaling
    from benchmarks.workloads import compose_config

    items: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="icm-bench-") as scratch:
        cfg = compose_config(sizes.model_overrides(), Path(scratch) / "run")
        steps: list[tuple[tuple[int, ...], Any]] = [
            ((1,), lambda: [sdr_speed.sdr_vs_references(cfg, sizes, profile)]),
            ((2,), lambda: [sdr_speed.sdr_fraction(cfg, sizes, profile)]),
            ((3, 4), lambda: list(training.training_overheads(cfg, sizes, profile))),
            ((5,), lambda: [training.faces_fraction(cfg, sizes, profile)]),
            ((6,), lambda: [sdr_scaling(sizes, threads, profile)]),
            ((7,), lambda: [sdr_speed.penalty_fraction(cfg, sizes, profile)]),
        ]
        for numbers, step in steps:
            if not any(n in only for n in numbers):
                continue
            started = time.perf_counter()
            _progress(f"benchmark {'+'.join(map(str, numbers))} ...")
            for item in step():
                if item["number"] in only:
                    item["seconds"] = round(time.perf_counter() - started, 1)
                    items.append(item)
                    _progress(f"  {item['number']}. {item['title']}: {item['value']:.4g}")
    return sorted(items, key=lambda i: i["number"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    import pytorch_lightning  # noqa: F401  (sets its loggers' levels on import)

    # Lightning's per-fit banners (GPU available, max_steps reached) would bury the table.
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning.fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="pytorch_lightning")
    from benchmarks import report as report_mod
    from benchmarks.timing import load_average, machine_info, set_clock, set_threads

    if args.render is not None:
        return render_saved(Path(args.render), args.out)
    set_threads(args.threads)
    set_clock(args.clock)
    sizes = QUICK if args.quick else FULL
    machine = machine_info() | {"clock": args.clock}
    started = time.perf_counter()
    items = run(sizes, args.threads, args.only, args.profile)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "")
    if args.threads != 1:
        command += f" --threads {args.threads}"
    if args.clock != "wall":
        command += f" --clock {args.clock}"
    if args.only != list(ITEMS):
        command += " --only " + ",".join(map(str, args.only))
    report = {
        "command": command,
        "quick": args.quick,
        "sizes": {k: list(v) if isinstance(v, tuple) else v
                  for k, v in sizes.__dict__.items()},
        "machine": machine,
        "load_average_end": load_average(),
        "duration_s": round(time.perf_counter() - started, 1),
        "items": items,
    }
    json_path, md_path = output_paths(args.out, args.quick)
    report_mod.write(report, json_path, md_path, _analysis(args.quick, args.out))
    print(report_mod.text_table(items, machine))
    print(f"\nwrote {json_path} and {md_path}")
    return report


def _analysis(quick: bool, out: str | None) -> str | None:
    """The hand-written analysis, for the default full-size report only."""
    if quick or out is not None or not ANALYSIS.is_file():
        return None
    return ANALYSIS.read_text(encoding="utf-8")


def render_saved(json_path: Path, out: str | None) -> dict[str, Any]:
    """Rewrite the Markdown of a saved report (``out``: PREFIX.md; default BENCHMARKS.md for
    a full-size report, else beside the JSON)."""
    from benchmarks import report as report_mod

    if not json_path.is_file():
        raise SystemExit(f"--render: no results file at {json_path}")
    report = json.loads(json_path.read_text(encoding="utf-8"))
    if out is not None:
        md_path = output_paths(out, report["quick"])[1]
    elif report["quick"]:
        md_path = json_path.with_suffix(".md")
    else:
        md_path = REPO / "BENCHMARKS.md"
    analysis = _analysis(report["quick"], out)
    md_path.write_text(report_mod.markdown(report, analysis), encoding="utf-8")
    print(report_mod.text_table(report["items"], report["machine"]))
    print(f"\nwrote {md_path}")
    return report


if __name__ == "__main__":
    main()

"""`icm-compare <multirun dir>`: table, curves and final values of a multirun's jobs."""

from __future__ import annotations

import argparse
import sys

from icm.layers import LEVELS


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="icm-compare",
        description=(
            "Read every job of an `icm-train -m` multirun (diagnostics.jsonl, "
            ".hydra/config.yaml, .hydra/overrides.yaml, run.json); write compare.csv (one "
            "row per job and evaluation step) and figures (stretch MSE and mean SDR at one "
            "level over training, mean and min-max over seeds: paper Fig. 6f); print the "
            "final values per group of jobs (all swept keys except seed)."
        ),
    )
    p.add_argument("multirun_dir", help="the sweep directory printed by `icm-train -m`")
    p.add_argument("--level", default="fine", choices=LEVELS,
                   help="level whose stretch MSE and SDR are drawn and tabulated (default: fine)")
    p.add_argument("--out", default=None,
                   help="folder for compare.csv and the figures (default: the multirun dir)")
    p.add_argument("--no-figures", action="store_true", help="write the CSV and table only")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    from icm.report.compare import CompareError, compare

    try:
        result = compare(args.multirun_dir, out=args.out, level=args.level,
                         figures=not args.no_figures)
    except CompareError as exc:
        print(f"icm-compare: error: {exc}", file=sys.stderr)
        sys.exit(2)
    swept = ", ".join(result.swept) or "nothing"
    print(f"{len(result.jobs)} jobs; swept: {swept}; grouped by: "
          f"{', '.join(result.group_by) or 'nothing (one group)'}")
    print(result.text)
    print(f"wrote {result.csv_path}")
    for path in result.figures:
        print(f"wrote {path}")


if __name__ == "__main__":
    main()

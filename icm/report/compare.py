"""Compare the jobs of a multirun: one table row per job and evaluation (`compare.csv`),
stretch-MSE and SDR curves over training per group of jobs (paper Fig. 6f), final values.

A job directory is any folder under the multirun directory holding `.hydra/overrides.yaml`
(Hydra writes one per job); its `diagnostics.jsonl` (`icm.callbacks.Diagnostics`),
`.hydra/config.yaml` and `run.json` (`icm.run`) are read, never written.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from icm.callbacks.records import read_records
from icm.layers import LEVELS
from icm.report.figures import save_figure
from icm.run import LAST_CKPT, read_status

RECORDS_FILE = "diagnostics.jsonl"
COMPLETED = "completed"
SEED_KEY = "seed"
# Overrides that say how a job was launched, not what it trained.
_LAUNCH_KEYS = ("hydra.", "hydra/", "sweeps", "ckpt_path", "resume")


class CompareError(ValueError):
    """A multirun directory that cannot be compared; the message is one line."""


@dataclass
class Job:
    """One job of a multirun as found on disk."""

    name: str
    path: Path
    overrides: dict[str, str]
    config: dict[str, Any]
    status: str
    records: list[dict[str, Any]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        """Finished: `run.json` says completed and the last checkpoint is there."""
        return self.status == COMPLETED and (self.path / LAST_CKPT).is_file()

    @property
    def max_steps(self) -> int | None:
        value = (self.config.get("trainer") or {}).get("max_steps")
        return value if isinstance(value, int) else None

    @property
    def last_step(self) -> int | None:
        return max((int(r["step"]) for r in self.records), default=None)


def _override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def _job_sort_key(name: str) -> tuple:
    # "10" after "9": numeric parts compare as numbers.
    return tuple(int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name))


def find_job_dirs(multirun_dir: str | os.PathLike) -> list[Path]:
    """Job directories under ``multirun_dir`` (any depth), in job-number order.

    Raises CompareError when the folder does not exist or holds no job directory.
    """
    root = Path(multirun_dir)
    if not root.is_dir():
        raise CompareError(f"multirun_dir: {root} is not a directory")
    found = [
        p.parent.parent
        for p in root.glob("**/.hydra/overrides.yaml")
        if ".submitit" not in p.parts
    ]
    if not found:
        raise CompareError(
            f"multirun_dir: no job directories in {root} (a job directory holds "
            ".hydra/overrides.yaml; pass the folder `icm-train -m` printed)"
        )
    return sorted(found, key=lambda p: _job_sort_key(p.relative_to(root).as_posix()))


def load_job(path: str | os.PathLike, name: str | None = None) -> Job:
    """Read one job directory: overrides, config, status and diagnostics records."""
    path = Path(path)
    raw = yaml.safe_load((path / ".hydra" / "overrides.yaml").read_text()) or []
    overrides = {
        _override_key(o): o.split("=", 1)[1] if "=" in o else ""
        for o in raw
        if not _override_key(o).startswith(_LAUNCH_KEYS)
    }
    config_file = path / ".hydra" / "config.yaml"
    config = yaml.safe_load(config_file.read_text()) if config_file.is_file() else {}
    status = str(read_status(path).get("status", "missing"))
    try:
        records = read_records(path / RECORDS_FILE)
    except ValueError as exc:  # a corrupt line: keep the job, flagged, without curves
        warnings.warn(f"{exc}; job {path.name} is listed without diagnostics", stacklevel=2)
        records, status = [], f"{status} (diagnostics unreadable)"
    records.sort(key=lambda r: int(r["step"]))
    return Job(name or path.name, path, overrides, config or {}, status, records)


def load_jobs(multirun_dir: str | os.PathLike) -> list[Job]:
    """Every job of a multirun directory (see `find_job_dirs`)."""
    root = Path(multirun_dir)
    return [load_job(p, p.relative_to(root).as_posix()) for p in find_job_dirs(root)]


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    """Override keys whose value differs between jobs (in first-seen order)."""
    keys: list[str] = []
    for job in jobs:
        keys += [k for k in job.overrides if k not in keys]
    return [k for k in keys if len({job.overrides.get(k) for job in jobs}) > 1]


def metric_columns(jobs: Sequence[Job]) -> list[str]:
    """`sdr/<net>.<level>/{mean,std,median}` and `stretch/<level>/mse` columns present in any
    record."""
    sdr: list[str] = []
    stretch: list[str] = []
    for job in jobs:
        for record in job.records:
            sdr += [f"sdr/{k}/{stat}" for k in record.get("sdr") or {}
                    for stat in ("mean", "std", "median") if f"sdr/{k}/{stat}" not in sdr]
            stretch += [
                f"stretch/{k}/mse" for k in record.get("stretch") or {}
                if f"stretch/{k}/mse" not in stretch
            ]
    level_order = {level: i for i, level in enumerate(LEVELS)}
    stretch.sort(key=lambda c: level_order.get(c.split("/")[1], len(LEVELS)))
    return sdr + stretch


def record_value(record: Mapping[str, Any], column: str) -> float | None:
    """The value of a metric column in one diagnostics record (None when absent).

    ``sdr/<net>.<level>/mean``: the layer's mean SDR (eq. 16; eq. 24 for strided layers);
    ``stretch/<level>/mse``: the stretch probe's MSE at that level (sec. 5.2).
    """
    kind, key, stat = column.split("/")
    value = ((record.get(kind) or {}).get(key) or {}).get(stat)
    return None if value is None else float(value)


def table(jobs: Sequence[Job]) -> tuple[list[str], list[dict[str, Any]]]:
    """Columns and rows of `compare.csv`: one row per job and evaluation step.

    A job without any record yet gets one row with an empty step, so no job goes missing.
    """
    swept = swept_keys(jobs)
    metrics = metric_columns(jobs)
    columns = ["job", *swept, "step", "status", *metrics]
    rows: list[dict[str, Any]] = []
    for job in jobs:
        base = {"job": job.name, **{k: job.overrides.get(k, "") for k in swept},
                "status": job.status}
        for record in job.records or [{}]:
            row = {**base, "step": record.get("step", "")}
            row.update({c: record_value(record, c) for c in metrics})
            rows.append(row)
    return columns, rows


def write_csv(path: str | os.PathLike, columns: Sequence[str],
              rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write rows as CSV (floats in full precision: repr round-trips; None → empty)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    os.replace(tmp, path)
    return path


def group_jobs(jobs: Sequence[Job], keys: Sequence[str]) -> dict[str, list[Job]]:
    """Jobs grouped by their values of ``keys``; label ``k=v, ...`` ("all jobs" if no keys)."""
    groups: dict[str, list[Job]] = {}
    for job in jobs:
        label = ", ".join(f"{k}={job.overrides.get(k, '')}" for k in keys) or "all jobs"
        groups.setdefault(label, []).append(job)
    return groups


@dataclass
class Curve:
    """A metric over training for one group: mean, spread over its jobs, and counts."""

    steps: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    low: np.ndarray
    high: np.ndarray
    count: np.ndarray


def group_curve(jobs: Sequence[Job], column: str) -> Curve:
    """Mean, sample std (ddof=1; NaN for one job), min and max over jobs at each step
    at which at least one job has a value of ``column``."""
    by_step: dict[int, list[float]] = {}
    for job in jobs:
        for record in job.records:
            value = record_value(record, column)
            if value is not None and math.isfinite(value):
                by_step.setdefault(int(record["step"]), []).append(value)
    steps = sorted(by_step)
    values = [np.asarray(by_step[s]) for s in steps]
    return Curve(
        steps=np.asarray(steps, dtype=int),
        mean=np.asarray([v.mean() for v in values]),
        std=np.asarray([v.std(ddof=1) if len(v) > 1 else math.nan for v in values]),
        low=np.asarray([v.min() for v in values]),
        high=np.asarray([v.max() for v in values]),
        count=np.asarray([len(v) for v in values], dtype=int),
    )


def curves_figure(groups: Mapping[str, Sequence[Job]], column: str,
                  title: str | None = None) -> Figure:
    """``column`` over training, one line per group: mean over its jobs (seeds) with the
    min–max band (paper Fig. 6f for ``stretch/fine/mse``). Log y when every value > 0."""
    fig = Figure(figsize=(6.4, 3.8), layout="constrained")
    ax = fig.add_subplot()
    lowest = math.inf
    for label, jobs in groups.items():
        curve = group_curve(jobs, column)
        if not len(curve.steps):
            continue
        incomplete = sum(not job.complete for job in jobs)
        name = f"{label} ({len(jobs)} run{'s' * (len(jobs) != 1)}"
        name += f", {incomplete} incomplete)" if incomplete else ")"
        (line,) = ax.plot(curve.steps, curve.mean, marker="o", markersize=3, label=name)
        if len(jobs) > 1:
            ax.fill_between(curve.steps, curve.low, curve.high, color=line.get_color(),
                            alpha=0.2, linewidth=0)
        lowest = min(lowest, float(curve.low.min()))
    if math.isfinite(lowest) and lowest > 0:
        ax.set_yscale("log")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("training step")
    ax.set_ylabel(column)
    if ax.lines:
        ax.legend(fontsize="small")
    ax.set_title(title or f"{column}: mean over seeds, band min–max", fontsize="medium")
    return fig


def _final(job: Job, column: str) -> float | None:
    for record in reversed(job.records):
        value = record_value(record, column)
        if value is not None:
            return value
    return None


def summary(groups: Mapping[str, Sequence[Job]], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Final value (last record of each job) per group: mean, sample std, count per column."""
    rows = []
    for label, jobs in groups.items():
        row: dict[str, Any] = {
            "group": label,
            "runs": len(jobs),
            "complete": sum(job.complete for job in jobs),
            "final_step": sorted({job.last_step for job in jobs if job.last_step is not None}),
        }
        for column in columns:
            values = np.asarray([v for j in jobs if (v := _final(j, column)) is not None])
            row[f"{column}/mean"] = float(values.mean()) if len(values) else None
            row[f"{column}/std"] = float(values.std(ddof=1)) if len(values) > 1 else None
            row[f"{column}/n"] = int(len(values))
        rows.append(row)
    return rows


def _pm(mean: float | None, std: float | None) -> str:
    if mean is None:
        return "n/a"
    return f"{mean:.4g}" + (f" ± {std:.2g}" if std is not None else "")


def format_summary(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain-text table of `summary` rows (final values, mean ± std over seeds)."""
    header = ["group", "runs", "final step", *columns]
    lines = [header]
    for row in rows:
        steps = row["final_step"]
        step = "-" if not steps else "..".join(str(s) for s in dict.fromkeys([steps[0], steps[-1]]))
        runs = f"{row['complete']}/{row['runs']}"
        lines.append([row["group"], runs, step,
                      *(_pm(row[f"{c}/mean"], row[f"{c}/std"]) for c in columns)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


def sdr_spread(groups: Mapping[str, Sequence[Job]], jobs: Sequence[Job]) -> str:
    """Spread of the SDR distribution of every layer at each job's last evaluation: std and
    |median − 1| (distance of the typical pair from spectral independence, eq. 16), mean
    over the jobs of each group. A plain-text table, one line per group and net."""
    layers = [c.split("/")[1] for c in metric_columns(jobs) if c.endswith("/mean")
              and c.startswith("sdr/")]
    nets = list(dict.fromkeys(layer.split(".")[0] for layer in layers))
    lines = [["group", "net", *[f"{lv}: std, |med-1|" for lv in LEVELS]]]
    for label, members in groups.items():
        for net in nets:
            cells = []
            for level in LEVELS:
                std = [v for j in members if (v := _final(j, f"sdr/{net}.{level}/std")) is not None]
                med = [abs(v - 1) for j in members
                       if (v := _final(j, f"sdr/{net}.{level}/median")) is not None]
                cells.append(f"{np.mean(std):.3f}, {np.mean(med):.3f}" if std and med else "n/a")
            lines.append([label, net, *cells])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    text = ["  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
            for line in lines]
    text.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(text)


@dataclass
class Comparison:
    """What `compare` wrote and found."""

    jobs: list[Job]
    swept: list[str]
    group_by: list[str]
    csv_path: Path
    figures: list[Path]
    summary: list[dict[str, Any]]
    summary_columns: list[str]
    text: str


def compare(multirun_dir: str | os.PathLike, out: str | os.PathLike | None = None,
            level: str = "fine", figures: bool = True) -> Comparison:
    """Compare the jobs of ``multirun_dir``; write `compare.csv` and figures to ``out``.

    Jobs are grouped by every swept key except ``seed``; curves and final values are the
    mean and spread over the jobs of a group (its seeds). Figures: the stretch MSE at
    ``level`` over training (Fig. 6f) and the mean SDR of each net's ``level`` layer.
    Incomplete jobs (status other than completed, or no last checkpoint) are included and
    flagged in the status column, the legend and the text table.
    """
    if level not in LEVELS:
        raise CompareError(f"level: unknown level {level!r}; allowed: {list(LEVELS)}")
    root = Path(multirun_dir)
    jobs = load_jobs(root)
    out_dir = Path(out) if out is not None else root
    columns, rows = table(jobs)
    csv_path = write_csv(out_dir / "compare.csv", columns, rows)

    swept = swept_keys(jobs)
    group_by = [k for k in swept if k != SEED_KEY]
    groups = group_jobs(jobs, group_by)
    stretch_column = f"stretch/{level}/mse"
    sdr_columns = [c for c in columns if c.startswith("sdr/") and c.endswith(f".{level}/mean")]
    summary_columns = [c for c in (stretch_column, *sdr_columns) if c in columns]

    written: list[Path] = []
    if figures:
        for column in summary_columns:
            name = column.replace("/", "_").replace(".", "_")
            title = (f"stretch MSE at the {level} level (Fig. 6f)"
                     if column == stretch_column else f"mean SDR of {column.split('/')[1]}")
            fig = curves_figure(groups, column, title=f"{title}: mean, min–max over seeds")
            written.append(save_figure(fig, out_dir / f"compare_{name}.png"))

    final = summary(groups, summary_columns)
    text = format_summary(final, summary_columns)
    if any(c.startswith("sdr/") for c in columns):
        text += "\n\nSDR spread per layer at the last evaluation (mean over the group's jobs)\n"
        text += sdr_spread(groups, jobs)
    flagged = [f"  {j.name}: {j.status}, last evaluation at step {j.last_step}"
               f" of {j.max_steps}" for j in jobs if not j.complete]
    if flagged:
        text += "\nincomplete jobs (included above):\n" + "\n".join(flagged)
    if stretch_column not in columns:
        text += f"\nno {stretch_column} in any job's diagnostics"
    return Comparison(jobs, swept, group_by, csv_path, written, final, summary_columns, text)

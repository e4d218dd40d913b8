"""Timing and profiling helpers for the benchmarks: interleaved repetitions with medians
(robust on a shared, noisy CPU), torch/cProfile summaries and a description of the machine."""

from __future__ import annotations

import cProfile
import datetime as _dt
import os
import platform
import pstats
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

# The clock every measurement reads: "wall" (perf_counter) or "cpu" (this process's CPU time,
# which time slices given to other jobs on a shared machine do not inflate).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}
_clock: list[str] = ["wall"]


def set_clock(name: str) -> None:
    """Measure with the ``name`` clock ("wall" or "cpu") from now on."""
    if name not in CLOCKS:
        raise ValueError(f"clock must be one of {sorted(CLOCKS)}, got {name!r}")
    _clock[0] = name


def clock_name() -> str:
    return _clock[0]


def now() -> float:
    """The current reading of the chosen clock, in seconds."""
    return CLOCKS[_clock[0]]()


def set_threads(threads: int) -> int:
    """Use ``threads`` intra-op threads (0: keep torch's default); returns the count in use."""
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise ValueError(f"threads must be an int >= 0 (0: torch's default), got {threads!r}")
    if threads > 0:
        torch.set_num_threads(threads)
    return torch.get_num_threads()


def time_call(fn: Callable[[], Any]) -> float:
    """Time of one call of ``fn`` in seconds on the chosen clock (its return value is
    discarded)."""
    started = now()
    fn()
    return now() - started


def interleaved(
    arms: Mapping[str, Callable[[], Any]],
    repeats: int,
    warmup: int = 1,
    *,
    self_timed: bool = False,
) -> dict[str, list[float]]:
    """Time several arms in rounds A, B, C, A, B, C, ... so that slow drifts of a shared
    machine's load hit every arm alike; ``warmup`` untimed rounds come first.

    Each arm is timed from outside (:func:`time_call`), or, with ``self_timed``, returns
    its own measurement in seconds (e.g. a steady-state window inside a longer run). Returns
    each arm's ``repeats`` durations; summarise them with :func:`median`.
    """
    if not arms:
        raise ValueError("arms must name at least one callable")
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise ValueError(f"repeats must be an int >= 1, got {repeats!r}")
    if isinstance(warmup, bool) or not isinstance(warmup, int) or warmup < 0:
        raise ValueError(f"warmup must be an int >= 0, got {warmup!r}")
    for _ in range(warmup):
        for arm in arms.values():
            arm()
    times: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(repeats):
        for name, arm in arms.items():
            times[name].append(float(arm()) if self_timed else time_call(arm))
    return times


def median(values: list[float]) -> float:
    """Median of a non-empty list of durations."""
    if not values:
        raise ValueError("median of no values")
    return float(statistics.median(values))


def spread(values: list[float]) -> float:
    """Relative spread (max - min) / median of repeated durations: how noisy they were."""
    mid = median(values)
    return float((max(values) - min(values)) / mid) if mid > 0 else 0.0


def profile_torch(fn: Callable[[], Any], rows: int = 8) -> list[dict[str, Any]]:
    """The ``rows`` torch operators with the largest self CPU time in one call of ``fn``."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    averages = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in averages) or 1.0
    return [
        {
            "name": e.key,
            "self_ms": round(e.self_cpu_time_total / 1e3, 3),
            "share": round(e.self_cpu_time_total / total, 4),
            "calls": int(e.count),
        }
        for e in averages[:rows]
    ]


def python_profile_rows(
    profiler: cProfile.Profile, rows: int = 10, sort: str = "cumulative"
) -> list[dict[str, Any]]:
    """The ``rows`` functions with the largest ``sort`` time ("cumulative": with callees,
    "self": own code only) recorded by ``profiler``."""
    if sort not in ("cumulative", "self"):
        raise ValueError(f"sort must be 'cumulative' or 'self', got {sort!r}")
    stats = pstats.Stats(profiler)
    entries = []
    for (filename, line, func), (_, calls, tottime, cumtime, _) in stats.stats.items():  # type: ignore[attr-defined]
        where = os.path.relpath(filename) if filename.startswith(os.sep) else filename
        if "site-packages" in where:
            where = where.split("site-packages" + os.sep, 1)[1]
        entries.append(
            {
                "function": f"{func} ({where}:{line})",
                "cumulative_s": round(cumtime, 4),
                "self_s": round(tottime, 4),
                "calls": int(calls),
            }
        )
    entries.sort(key=lambda e: e["cumulative_s" if sort == "cumulative" else "self_s"],
                 reverse=True)
    return entries[:rows]


def profile_python(fn: Callable[[], Any], rows: int = 10) -> list[dict[str, Any]]:
    """cProfile of one call of ``fn``: the ``rows`` functions with the largest cumulative time."""
    profiler = cProfile.Profile()
    profiler.enable()
    try:
        fn()
    finally:
        profiler.disable()
    return python_profile_rows(profiler, rows)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux, else ``platform``)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, threads, versions, date, load."""
    import pytorch_lightning as pl

    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "lightning": pl.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "load_average": load_average(),
    }

"""Benchmark 6: time and peak memory of `icm.spectral.sdr` against channel count and map size.

Each configuration runs in a fresh Python process (``python -m benchmarks.scaling SPEC``). The
peak is the process's resident-memory high-water mark during the `sdr` call: on Linux the mark
is reset just before the call (``/proc/self/clear_refs``) and read from ``VmHWM`` after it;
elsewhere ``ru_maxrss`` (the peak since the process started) stands in.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from typing import Any

import numpy as np

from benchmarks.timing import clock_name
from benchmarks.workloads import REPO, Sizes, result

MIB = 2**20
GIB = 2**30


def _status_bytes(key: str) -> int | None:
    """A memory line (``VmRSS``, ``VmHWM``) of /proc/self/status in bytes, None off Linux."""
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _reset_peak() -> bool:
    """Reset the resident-memory high-water mark (Linux); whether that worked."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return _status_bytes("VmHWM") is not None
    except OSError:
        return False


def _max_rss_bytes() -> int:
    """``ru_maxrss`` in bytes (KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """In this process: build a stride-2 ``ConvTranspose2d(C, C, 5)`` (a decoder level) and
    ``batch`` post-ReLU cause maps of side ``map``, run `sdr` once for the peak memory, then
    ``repeats`` more times for the median time."""
    import torch
    from torch import nn

    from benchmarks.timing import now, set_clock, set_threads
    from icm.spectral import sdr

    set_threads(int(spec["threads"]))
    set_clock(str(spec.get("clock", "wall")))
    torch.manual_seed(0)
    c, side, batch, k = int(spec["channels"]), int(spec["map"]), int(spec["batch"]), 5
    layer = nn.ConvTranspose2d(c, c, k, stride=2, padding=k // 2, output_padding=1)
    x = torch.empty(batch, c, side, side).normal_().relu_()
    reset = _reset_peak()
    rss_before = _status_bytes("VmRSS") if reset else None
    started = now()
    sdr(layer, x)
    first = now() - started
    peak = _status_bytes("VmHWM") if reset else _max_rss_bytes()
    times = []
    for _ in range(int(spec["repeats"])):
        started = now()
        sdr(layer, x)
        times.append(now() - started)
    return {
        "channels": c,
        "map": side,
        "batch": batch,
        "input_mib": round(x.numel() * x.element_size() / MIB, 1),
        "time_s": round(float(np.median(times)) if times else first, 4),
        "first_call_s": round(first, 4),
        # Whole process at its peak during the call: interpreter, torch, inputs, sdr's work.
        "peak_rss_mib": round(peak / MIB, 1),
        # What the call added at its peak over the resident memory just before it.
        "sdr_extra_mib": None if rss_before is None else round((peak - rss_before) / MIB, 1),
        "peak_method": "VmHWM reset before the call" if reset else "ru_maxrss since start",
    }


def run_isolated(spec: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter; its JSON answer."""
    completed = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", json.dumps(spec)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, check=False,
    )
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["(no output)"]
        raise RuntimeError(f"scaling run {spec} failed: {tail[0]}")
    return json.loads(completed.stdout.strip().splitlines()[-1])


def _slope(xs: list[float], ys: list[float]) -> float | None:
    """Exponent a of a least-squares fit y ∝ x^a on log-log axes (None with < 2 points)."""
    if len(xs) < 2:
        return None
    return round(float(np.polyfit(np.log(xs), np.log(ys), 1)[0]), 2)


def sdr_scaling(sizes: Sizes, threads: int, profile: bool = False) -> dict[str, Any]:
    """Benchmark 6: SDR time and peak memory over a channel sweep and a map-size sweep, and the
    peak memory of a ``headline`` layer (512 × 512 channels, 64 × 64 maps at full size)."""
    base = {"batch": sizes.scaling_batch, "repeats": sizes.scaling_repeats, "threads": threads,
            "clock": clock_name()}
    runs: dict[tuple[int, int], dict[str, Any]] = {}

    def point(channels: int, side: int) -> dict[str, Any]:
        """One configuration, measured once even when both sweeps (or the headline) hold it."""
        if (channels, side) not in runs:
            runs[channels, side] = run_isolated({**base, "channels": channels, "map": side})
        return runs[channels, side]

    by_channels = [point(c, sizes.scaling_channels_map) for c in sizes.scaling_channels]
    by_map = [point(sizes.scaling_maps_channels, m) for m in sizes.scaling_maps]
    channels, side = sizes.headline
    headline = point(channels, side)
    peak_gib = headline["peak_rss_mib"] * MIB / GIB
    details = {
        "by_channels": by_channels,
        "by_map": by_map,
        "headline": headline,
        "time_exponent_channels": _slope(
            [r["channels"] for r in by_channels], [r["time_s"] for r in by_channels]
        ),
        "time_exponent_map_side": _slope(
            [r["map"] for r in by_map], [r["time_s"] for r in by_map]
        ),
    }
    return result(
        6, "sdr_scaling_peak", f"Scaling: peak memory, {channels}×{channels}-channel layer, "
        f"{side}×{side} maps (GiB)",
        peak_gib, "GiB", 2.0, "<=",
        f"Stride-2 ConvTranspose2d(C, C, 5), batch {sizes.scaling_batch} of ReLU'd Gaussian "
        "maps; each configuration in a fresh process: peak resident memory of the whole "
        "process (interpreter, torch, inputs and `sdr`; details also give what `sdr` added "
        f"over the inputs) and median time of {sizes.scaling_repeats} calls after a first "
        "one. Sweeps: channels at one map side, map side at one channel count.",
        details,
    )


if __name__ == "__main__":
    print(json.dumps(measure(json.loads(sys.argv[1]))))

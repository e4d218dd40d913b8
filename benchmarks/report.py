"""The benchmark table as plain text (terminal), Markdown (BENCHMARKS.md) and JSON."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any


def format_value(value: float | None, unit: str) -> str:
    """A headline value for the table: fractions shown as percent when ``unit`` is "%"."""
    if value is None:
        return "n/a"
    if unit == "%":
        return f"{value * 100:.2f} %"
    if unit == "×":
        return f"{value:,.0f} ×" if value >= 100 else f"{value:.1f} ×"
    if unit:
        return f"{value:.3g} {unit}"
    return f"{value:.3g}"


def format_target(item: dict[str, Any]) -> str:
    if item["target"] is None:
        return "—"
    sign = "≥" if item["direction"] == ">=" else "≤"
    return f"{sign} {format_value(item['target'], item['unit'])}"


def format_met(item: dict[str, Any]) -> str:
    return {True: "yes", False: "**no**", None: "—"}[item["met"]]


def summary_rows(items: Sequence[dict[str, Any]]) -> list[list[str]]:
    return [
        [str(i["number"]), i["title"], format_value(i["value"], i["unit"]), format_target(i),
         format_met(i).strip("*")]
        for i in items
    ]


def text_table(items: Sequence[dict[str, Any]], machine: dict[str, Any]) -> str:
    """The summary table for the terminal."""
    header = ["#", "measurement", "value", "target", "met"]
    rows = summary_rows(items)
    widths = [max(len(r[k]) for r in [header, *rows]) for k in range(len(header))]
    line = "  ".join("-" * w for w in widths)
    out = [
        f"{machine['cpu']}, {machine['cores']} cores, torch {machine['torch']} "
        f"({machine['torch_threads']} threads), {machine.get('clock', 'wall')} clock, "
        f"{machine['date']}",
        "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)),
        line,
    ]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines


def _details_sdr(d: dict[str, Any]) -> list[str]:
    rows = [
        [r["level"], "×".join(map(str, r["cause"])), r["pairs"], r["sdr_ms"], r["padded_ms"],
         f"{r['naive_ms_per_pair']} ({r['naive_pairs_timed']} timed)",
         r["naive_ms_extrapolated"], r["speedup_vs_naive"], r["speedup_vs_padded"]]
        for r in d["levels"]
    ]
    rows.append(["**all**", "", sum(r["pairs"] for r in d["levels"]), d["sdr_ms"],
                 d["padded_ms"], "", d["naive_ms_extrapolated"],
                 round(d["naive_ms_extrapolated"] / d["sdr_ms"], 1), d["speedup_vs_padded"]])
    return _md_table(
        ["level", "cause (B×C×h×w)", "pairs", "`sdr` ms", "padded FFT ms", "naive ms/pair",
         "naive ms (extrapolated)", "× vs naive", "× vs padded"], rows
    ) + ["", f"Agreement with `sdr`: max |Δρ| {d['max_abs_diff_padded']:.1e} (padded, all "
             f"pairs), {d['max_abs_diff_naive']:.1e} (naive, timed pairs)."] + _periodogram(d)


def _periodogram(d: dict[str, Any]) -> list[str]:
    p = d.get("periodogram")
    if not p:
        return []
    return ["", f"Periodogram of the largest cause ({'×'.join(map(str, p['cause']))}): "
                f"{p['float64_ms']} ms in float64 (cast, rfft2, abs², energy pass) against "
                f"{p['float32_ms']} ms in float32 with re² + im² summed in float64 "
                f"({p['speedup']} ×; max relative difference "
                f"{p['max_relative_difference']:.1e})."]


def _details_fraction(d: dict[str, Any]) -> list[str]:
    return [
        f"Training step {d['train_step_ms']} ms; `sdr` of {d['layers']} layers "
        f"{d['sdr_only_ms']} ms; with the cause-recording forward passes "
        f"{d['sdr_with_forward_ms']} ms (fraction {d['fraction_with_forward']})."
    ]


def _details_callbacks(d: dict[str, Any]) -> list[str]:
    rows = [
        [name, c["default_cadence"], c["seconds_per_event"], c["seconds_per_step_otherwise"],
         format_value(c["default_overhead"], "%")]
        for name, c in d["callbacks"].items()
    ]
    return _md_table(
        ["callback", "default cadence (steps)", "s per evaluation", "s per other step",
         "overhead at default cadence"], rows
    ) + [
        "",
        f"Training step {d['step_ms_in_callback_fits']} ms (callback fits, hook time "
        f"removed). Cross-check at the scaled cadence (every {d['scaled_cadence']} steps): "
        f"{d['step_ms_with_callbacks_scaled']} ms per step with callbacks against "
        f"{d['step_ms_without_callbacks']} ms in separate fits without, direct overhead "
        f"{format_value(d['direct_overhead_at_scaled_cadence'], '%')}, against "
        f"{format_value(d['hook_overhead_at_scaled_cadence'], '%')} from the hook times.",
    ]


def _details_lightning(d: dict[str, Any]) -> list[str]:
    return [f"Step {d['step_ms_bare']} ms bare, {d['step_ms_lightning']} ms in Lightning."]


def _details_faces(d: dict[str, Any]) -> list[str]:
    return [f"Rendering {d['render_ms']} ms per batch ({d['images_per_second']} images/s); "
            f"training step {d['step_ms']} ms."]


def _details_scaling(d: dict[str, Any]) -> list[str]:
    header = ["channels", "map side", "batch", "inputs MiB", "time s", "first call s",
              "process peak MiB", "`sdr` extra MiB"]

    def row(r: dict[str, Any]) -> list[Any]:
        return [r["channels"], r["map"], r["batch"], r["input_mib"], r["time_s"],
                r["first_call_s"], r["peak_rss_mib"], r["sdr_extra_mib"]]

    h = d["headline"]
    return (
        ["Channel sweep:", ""] + _md_table(header, [row(r) for r in d["by_channels"]])
        + ["", "Map-size sweep:", ""] + _md_table(header, [row(r) for r in d["by_map"]])
        + ["", f"Time ∝ C^{d['time_exponent_channels']} (channels), "
               f"∝ side^{d['time_exponent_map_side']} (map side). Headline layer "
               f"{h['channels']}×{h['channels']}, {h['map']}×{h['map']} maps: process peak "
               f"{h['peak_rss_mib']} MiB ({h['input_mib']} MiB of inputs, `sdr` added "
               f"{h['sdr_extra_mib']} MiB), {h['time_s']} s."]
    )


def _details_penalty(d: dict[str, Any]) -> list[str]:
    first, last = d["penalty_first_last"]
    return [f"VAE step {d['vae_step_ms']} ms, regularizer step {d['penalty_step_ms']} ms "
            f"(levels {', '.join(d['levels'])}); penalty {first:.4g} → {last:.4g} over the "
            "measured steps."]


DETAILS: dict[str, Callable[[dict[str, Any]], list[str]]] = {
    "sdr_speedup": _details_sdr,
    "sdr_step_fraction": _details_fraction,
    "callbacks_overhead": _details_callbacks,
    "lightning_vs_bare": _details_lightning,
    "faces_fraction": _details_faces,
    "sdr_scaling_peak": _details_scaling,
    "penalty_step_fraction": _details_penalty,
}


def _profile_lines(rows: list[dict[str, Any]]) -> list[str]:
    if rows and "self_ms" in rows[0]:
        return _md_table(["torch operator", "self ms", "share", "calls"],
                         [[f"`{r['name']}`", r["self_ms"], f"{r['share']:.1%}", r["calls"]]
                          for r in rows])
    return _md_table(["function", "cumulative s", "self s", "calls"],
                     [[f"`{r['function']}`", r["cumulative_s"], r["self_s"], r["calls"]]
                      for r in rows])


def markdown(report: dict[str, Any], analysis: str | None = None) -> str:
    """BENCHMARKS.md: machine, summary table, details and profiles of every benchmark, and an
    optional hand-written ``analysis`` section."""
    m = report["machine"]
    load = f"{m['load_average']} → {report['load_average_end']}"
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `{report['command']}` ({report['duration_s']:.0f} s). Every figure is "
        "a ratio of times measured in the same run, with the compared variants interleaved "
        "(A, B, A, B, …) and medians over the repetitions: the machine is shared and noisy, "
        "so absolute times alone mean little. Method: `benchmarks/README.md`.",
        "",
        "## Machine",
        "",
    ] + _md_table(
        ["CPU", "cores", "torch threads", "clock", "torch", "Lightning", "Python",
         "date (UTC)", "load average (start → end)"],
        [[m["cpu"], m["cores"], m["torch_threads"], m.get("clock", "wall"), m["torch"],
          m["lightning"], m["python"], m["date"], load]],
    ) + ["", "## Summary", ""] + _md_table(
        ["#", "measurement", "value", "target", "met"],
        [[str(i["number"]), i["title"], format_value(i["value"], i["unit"]), format_target(i),
          format_met(i)] for i in report["items"]],
    )
    for item in report["items"]:
        lines += ["", f"## {item['number']}. {item['title']}", "", item["method"], ""]
        lines += DETAILS.get(item["key"], lambda d: [])(item["details"])
        if item.get("profile"):
            why = "target missed" if item["met"] is False else "requested"
            lines += ["", f"Profile ({why}):", ""] + _profile_lines(item["profile"])
    if analysis:
        lines += ["", "## Analysis", "", analysis.strip()]
    return "\n".join(lines) + "\n"


def write(report: dict[str, Any], json_path: Path, markdown_path: Path,
          analysis: str | None = None) -> None:
    """Write the report as JSON and Markdown (creating parent folders)."""
    for path in (json_path, markdown_path):
        path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    markdown_path.write_text(markdown(report, analysis), encoding="utf-8")

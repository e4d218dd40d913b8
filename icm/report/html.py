"""A self-contained ``report.html`` of an analysis: PNG figures embedded as base64, tables of
the numbers of ``analysis.json``; no script, no external file, readable offline."""

from __future__ import annotations

import base64
import html
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = ["render_report", "write_report"]

_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-bottom: 1px solid #ccc; }
h3 { font-size: 1.0em; }
table { border-collapse: collapse; margin: 0.5em 0 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 2px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
img { max-width: 100%; display: block; margin: 0.5em 0; }
.note { color: #555; font-size: 0.9em; }
code { background: #f4f4f4; padding: 0 3px; }
"""


def _fmt(value: Any) -> str:
    """Numbers to 4 significant digits, None to a dash, everything else escaped."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (list, tuple)):
        return ", ".join(_fmt(v) for v in value)
    return html.escape(str(value))


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_fmt(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _figure(out_dir: Path, figures: Mapping[str, str], name: str, caption: str = "") -> str:
    rel = figures.get(name)
    if rel is None or not (out_dir / rel).is_file():
        return ""
    data = base64.b64encode((out_dir / rel).read_bytes()).decode("ascii")
    alt = html.escape(caption or name)
    text = f'<p class="note">{html.escape(caption)}</p>' if caption else ""
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">{text}'


def _p(text: str) -> str:
    return f'<p class="note">{html.escape(text)}</p>'


def _summary(result: Mapping[str, Any]) -> str:
    hp = result.get("hparams") or {}
    data = result.get("data") or {}
    rows = [
        ("checkpoint", result.get("checkpoint")),
        ("model", result.get("model")),
        *((f"hparams.{k}", v if not isinstance(v, Mapping) else str(dict(v)))
          for k, v in hp.items()),
        *((f"data.{k}", v) for k, v in data.items()),
        ("seconds (total)", (result.get("seconds") or {}).get("total")),
    ]
    return "<h2>Run</h2>" + _table(["", "value"], rows)


def _sdr(result: Mapping[str, Any], out_dir: Path, figures: Mapping[str, str]) -> str:
    stats = result.get("sdr") or {}
    keys = ["mean", "std", "median", "mode", "n", "undefined"]
    rows = [[layer, *(s.get(k) for k in keys)] for layer, s in stats.items()]
    return (
        "<h2>Spectral density ratio (eq. 16, 24)</h2>"
        + _p("SDR of every (filter, map) pair per layer; 1 is spectral independence.")
        + _table(["layer", *keys], rows)
        + _figure(out_dir, figures, "sdr_histograms", "SDR histograms (Fig. 5, 8)")
    )


def _stretch(result: Mapping[str, Any], out_dir: Path, figures: Mapping[str, str]) -> str:
    probe = result.get("stretch") or {}
    scales = max((len(r.get("mse_per_scale") or []) for r in probe.values()), default=0)
    rows = [
        [level, r.get("mse"), *(list(r.get("mse_per_scale") or []) + [None] * scales)[:scales]]
        for level, r in probe.items()
    ]
    return (
        "<h2>Stretch probe (sec. 5.2, Fig. 6)</h2>"
        + _p("MSE between the output with one level's maps stretched and the stretched "
             "output; Haar scale 1 is the coarsest.")
        + _table(["level", "mse", *(f"scale {j}" for j in range(1, scales + 1))], rows)
        + _figure(out_dir, figures, "stretch_probe", "rows: normal, each level stretched, "
                  "stretched image")
        + _figure(out_dir, figures, "stretch_scales")
    )


def _modules(result: Mapping[str, Any], out_dir: Path, figures: Mapping[str, str]) -> str:
    parts_html = ["<h2>Modules (sec. 5.3, App. B.7)</h2>"]
    for level, entry in (result.get("modules") or {}).items():
        parts_html.append(f"<h3>{html.escape(level)}: {entry['channels']} channels, "
                          f"k = {entry['k']}</h3>")
        parts_html.append(_p(f"influence maps from {entry.get('latents')}"))
        members = [[f"m{m}", len(ch), ch] for m, ch in enumerate(entry["members"])]
        parts_html.append(_table(["module", "channels", "members"], members))
        align = entry.get("alignment")
        if align:
            parts = align["parts"]
            parts_html.append(_p(
                f"IoU of each template (> {align['template_threshold']} of its peak) with each "
                f"part's population mask (pixels in that part in > {align['mask_threshold']} "
                "of the held-out faces)"))
            parts_html.append(_table(["module", *parts],
                                     [[f"m{m}", *row] for m, row in enumerate(align["iou"])]))
            parts_html.append(_p("template mass per part (each row sums to 1)"))
            parts_html.append(_table(["module", *parts],
                                     [[f"m{m}", *row] for m, row in enumerate(align["mass"])]))
    parts_html.append(_figure(out_dir, figures, "module_templates",
                              "module templates per level; last row: part frequency"))
    return "".join(parts_html)


def _interventions(result: Mapping[str, Any], out_dir: Path, figures: Mapping[str, str]) -> str:
    out = ["<h2>Targeted interventions (Fig. 10, App. B.7)</h2>"]
    for key, title, figure in (("targeted", "Targeted stretch", "targeted_stretch"),
                               ("fluo", "FluoHair", "fluo_hair")):
        entry = result.get(key)
        out.append(f"<h3>{title}</h3>")
        if entry is None:
            out.append(_p("not run (see Skipped)"))
            continue
        out.append(_p(f"level {entry['level']}, module m{entry['module']} "
                      f"({len(entry['channels'])} channels), chosen by {entry['chosen_by']}"))
        out.append(_figure(out_dir, figures, figure))
    return "".join(out)


def _ground_truth(result: Mapping[str, Any]) -> str:
    truth = result.get("ground_truth")
    if not truth:
        return ""
    out = ["<h2>Ground truth on synthetic faces</h2>"]
    extra = truth.get("extrapolation")
    if extra:
        names = list(extra["mse"])
        out.append(f"<h3>Extrapolation against truth: eye spacing ×{extra['factor']}</h3>")
        out.append(_p("MSE against the true render with wider-set eyes (outside the training "
                      "range); region: eyes of the original ∪ eyes of the truth "
                      f"({extra['region_area']:.4g} of the pixels). Reconstruction error "
                      f"against the originals: {_fmt(extra['reconstruction_error'])}."))
        out.append(_table(["", *names], [
            ["MSE, whole image", *(extra["mse"][n] for n in names)],
            ["MSE, eye region", *(extra["mse_in_region"][n] for n in names)],
        ]))
    loc = truth.get("locality")
    if loc:
        out.append("<h3>Locality</h3>")
        out.append(_p("fraction of the change energy inside the region; area: the fraction a "
                      "change spread evenly would score"))
        out.append(_table(["intervention", "level", "module", "region", "in region", "area"], [
            [name, e.get("level"), e.get("module"), e.get("region"), e.get("in_mask"),
             e.get("mask_area")] for name, e in loc.items()
        ]))
    fluo = truth.get("fluo")
    if fluo:
        out.append("<h3>FluoHair</h3>")
        out.append(_p(
            "outside palette: fraction of hair pixels (hair masks eroded by "
            f"{fluo['erosion']} px, {fluo['hair_pixels']} pixels) farther than "
            f"{fluo['band']:.3g} from every training hair colour in the hue–chroma plane; "
            "outside hair: fraction of the change energy outside the hair masks"))
        rows = [[v, s["outside_palette"], s["energy_outside_hair"]]
                for v, s in fluo["variants"].items()]
        rows.append(["unedited reconstruction", fluo["unedited_outside_palette"], None])
        rows.append(["held-out renders", fluo["render_outside_palette"], None])
        rows += [[f"true {n} render", v, None]
                 for n, v in fluo["fluo_render_outside_palette"].items()]
        out.append(_table(["images", "outside palette", "outside hair"], rows))
    return "".join(out)


def render_report(result: Mapping[str, Any], out_dir: str | Path) -> str:
    """The HTML text of the report of ``result`` (an ``analysis.json`` dict); figures are
    read from ``out_dir / result["figures"][name]`` and embedded."""
    out = Path(out_dir)
    figures = result.get("figures") or {}
    skipped = result.get("skipped") or []
    body = [
        f"<h1>icm analysis: {html.escape(str(result.get('model')))}</h1>",
        _summary(result),
        _sdr(result, out, figures),
        _stretch(result, out, figures),
        _modules(result, out, figures),
        _interventions(result, out, figures),
        _ground_truth(result),
        "<h2>Skipped</h2>",
        "<ul>" + "".join(f"<li>{html.escape(s)}</li>" for s in skipped) + "</ul>"
        if skipped else _p("nothing"),
    ]
    return (
        "<!DOCTYPE html><html><head><meta charset=\"utf-8\">"
        f"<title>icm analysis</title><style>{_STYLE}</style></head><body>"
        + "\n".join(body)
        + "</body></html>\n"
    )


def write_report(result: Mapping[str, Any], out_dir: str | Path) -> Path:
    """Write ``out_dir/report.html`` (see :func:`render_report`) and return its path."""
    path = Path(out_dir) / "report.html"
    path.write_text(render_report(result, out_dir), encoding="utf-8")
    return path

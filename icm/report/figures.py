"""Plotting functions for the paper's figures (data in, matplotlib Figure out) and image grids.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``, Agg canvas),
never pyplot, so nothing depends on or changes the global backend and nothing leaks.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]


def _numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().float().numpy()
    return np.asarray(values, dtype=np.float64)


def _new_figure(
    width: float,
    height: float,
    *,
    left: float = 0.7,
    right: float = 0.15,
    bottom: float = 0.55,
    top: float = 0.55,
    wspace: float = 0.25,
) -> Figure:
    """A figure of ``width`` × ``height`` inches with fixed margins (inches).

    Fixed margins instead of a layout engine: a constrained or tight layout about triples
    the time of a save, and these figures are redrawn during training.
    """
    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    fig.subplots_adjust(
        left=left / width,
        right=1 - right / width,
        bottom=bottom / height,
        top=1 - top / height,
        wspace=wspace,
    )
    return fig


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` to ``path`` (folder created; format from the suffix) and return the path.

    The file is written under a temporary name and renamed, so a reader (or a crash) never
    sees half a PNG.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    fig.savefig(tmp, dpi=dpi)
    os.replace(tmp, path)
    return path


def sdr_histograms(
    values: Mapping[str, Mapping[str, ArrayLike]],
    bins: int = 40,
    title: str | None = None,
) -> Figure:
    """Superimposed SDR histograms per level, one colour per net (paper Fig. 5 and Fig. 8).

    ``values[net][level]`` holds the SDR values (eq. 16/24) of one layer; NaN (undefined
    pairs) are ignored. One panel per level, in the first net's level order; nets share the
    bins of a panel (``bins`` equal-width bins over the pooled finite values) and are drawn
    as densities so layers with different numbers of pairs compare. A dashed line marks
    SDR = 1, spectral independence.
    """
    if not values:
        raise ValueError("values: no nets to plot")
    levels: list[str] = []
    for per_level in values.values():
        levels += [level for level in per_level if level not in levels]
    if not levels:
        raise ValueError("values: no levels to plot")
    fig = _new_figure(3.0 * len(levels) + 0.6, 2.9)
    axes = fig.subplots(1, len(levels), squeeze=False)[0]
    for ax, level in zip(axes, levels, strict=True):
        pooled = {
            net: v[np.isfinite(v)]
            for net, per_level in values.items()
            if level in per_level
            for v in [_numpy(per_level[level]).ravel()]
        }
        finite = [v for v in pooled.values() if v.size]
        if finite:
            everything = np.concatenate(finite)
            low, high = float(everything.min()), float(everything.max())
            if high <= low:
                low, high = low - 0.5, high + 0.5
            edges = np.linspace(low, high, bins + 1)
            for net, v in pooled.items():
                if v.size:
                    ax.hist(v, bins=edges, density=True, alpha=0.5, label=f"{net} (n={v.size})")
        ax.axvline(1.0, color="black", linestyle="--", linewidth=0.8)
        ax.set_title(level)
        ax.set_xlabel("SDR")
        ax.legend(fontsize="small")
    axes[0].set_ylabel("density")
    if title:
        fig.suptitle(title)
    return fig


def to_uint8(images: torch.Tensor | np.ndarray) -> np.ndarray:
    """Images (B, C, H, W) in [-1, 1] to uint8 (B, H, W, C); values outside are clipped."""
    array = _numpy(images)
    if array.ndim != 4:
        raise ValueError(f"images: expected (B, C, H, W), got shape {array.shape}")
    array = np.clip((array + 1.0) * 127.5, 0.0, 255.0).round().astype(np.uint8)
    return array.transpose(0, 2, 3, 1)


def image_grid(
    images: torch.Tensor | np.ndarray, nrow: int | None = None, padding: int = 2
) -> np.ndarray:
    """Tile images (B, C, H, W) in [-1, 1] into one uint8 array (rows·H', cols·W', C).

    ``nrow`` images per row (default: ceil(sqrt(B))); ``padding`` pixels of black between
    and around tiles. C is 1 (grayscale) or 3 (RGB).
    """
    tiles = to_uint8(images)
    count, height, width, channels = tiles.shape
    if count == 0:
        raise ValueError("images: empty batch")
    if channels not in (1, 3):
        raise ValueError(f"images: expected 1 or 3 channels, got {channels}")
    if nrow is None:
        nrow = math.ceil(math.sqrt(count))
    if nrow < 1:
        raise ValueError(f"nrow: must be >= 1, got {nrow}")
    if padding < 0:
        raise ValueError(f"padding: must be >= 0, got {padding}")
    ncol = min(nrow, count)
    nrows = math.ceil(count / nrow)
    grid = np.zeros(
        (nrows * (height + padding) + padding, ncol * (width + padding) + padding, channels),
        dtype=np.uint8,
    )
    for index in range(count):
        r, c = divmod(index, nrow)
        top, left = padding + r * (height + padding), padding + c * (width + padding)
        grid[top : top + height, left : left + width] = tiles[index]
    return grid


def save_image(grid: np.ndarray, path: str | os.PathLike) -> Path:
    """Write a uint8 (H, W, C) array as an image file (PNG by suffix) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    array = grid[..., 0] if grid.ndim == 3 and grid.shape[-1] == 1 else grid
    tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
    Image.fromarray(array).save(tmp)
    os.replace(tmp, path)
    return path


def stretch_grid(
    rows: Sequence[torch.Tensor | np.ndarray],
    labels: Sequence[str],
    columns: int = 8,
    title: str | None = None,
) -> Figure:
    """The stretch-extrapolation picture (paper Fig. 6a/9a): one labelled row per batch.

    ``rows`` are image batches (B, C, H, W) in [-1, 1]; by convention the normal samples,
    then each level's stretched-cause output, then the stretched original. The first
    ``columns`` images of each row are shown.
    """
    if len(rows) != len(labels):
        raise ValueError(f"labels: {len(labels)} labels for {len(rows)} rows")
    if not rows:
        raise ValueError("rows: nothing to show")
    count = min(columns, *(len(r) for r in rows))
    stacked = np.concatenate([_numpy(r[:count]) for r in rows])
    grid = image_grid(stacked, nrow=count, padding=2)
    tile_height = grid.shape[0] / len(rows)
    margin = 0.3 + 0.075 * max(len(label) for label in labels)  # inches for the row labels
    fig = _new_figure(1.0 * count + margin + 0.1, 1.0 * len(rows) + 0.5, left=margin,
                      right=0.1, bottom=0.1, top=0.4)
    ax = fig.add_subplot()
    ax.imshow(grid[..., 0] if grid.shape[-1] == 1 else grid, cmap="gray", vmin=0, vmax=255)
    ax.set_yticks([tile_height * (i + 0.5) for i in range(len(rows))], list(labels))
    ax.set_xticks([])
    ax.tick_params(length=0)
    for spine in ax.spines.values():
        spine.set_visible(False)
    if title:
        ax.set_title(title)
    return fig


def scale_bars(
    per_level: Mapping[str, ArrayLike],
    ylabel: str = "MSE of the difference",
    title: str | None = None,
) -> Figure:
    """Per-scale distortion of each stretched level (paper Fig. 6c/9c, left).

    ``per_level[level]`` is a sequence over wavelet scales (scale 1 coarsest, DESIGN.md) of
    the Haar-band MSE (or energy) of stretched-cause output minus stretched output. One
    panel per level, sharing the y axis so levels compare.
    """
    if not per_level:
        raise ValueError("per_level: no levels to plot")
    fig = _new_figure(2.4 * len(per_level) + 0.6, 2.6)
    axes = fig.subplots(1, len(per_level), squeeze=False, sharey=True)[0]
    for ax, (level, scores) in zip(axes, per_level.items(), strict=True):
        v = _numpy(scores).ravel()
        ax.bar(np.arange(1, v.size + 1), v, color="tab:blue")
        ax.set_xticks(np.arange(1, v.size + 1))
        ax.set_xlabel("wavelet scale (1 coarsest)")
        ax.set_title(level)
    axes[0].set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    return fig


def stretch_mse_curves(
    records: Sequence[Mapping[str, Any]], key: str = "mse", title: str | None = None
) -> Figure:
    """Stretch MSE per level over training steps (paper Fig. 6f), from diagnostics records.

    Each record has ``step`` and ``stretch[level][key]``; records without a stretch entry
    are skipped. One line per level, log-scaled y when every value is positive.
    """
    series: dict[str, tuple[list[int], list[float]]] = {}
    for record in records:
        for level, scores in (record.get("stretch") or {}).items():
            value = scores.get(key) if isinstance(scores, Mapping) else None
            if value is None:
                continue
            steps, values = series.setdefault(level, ([], []))
            steps.append(int(record["step"]))
            values.append(float(value))
    fig = _new_figure(5.4, 3.2, left=1.2, top=0.4)
    ax = fig.add_subplot()
    for level, (steps, values) in series.items():
        order = np.argsort(steps)
        ax.plot(np.asarray(steps)[order], np.asarray(values)[order], marker="o", label=level)
    all_values = [v for _, values in series.values() for v in values]
    if all_values and min(all_values) > 0:
        ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"stretch {key}")
    if series:
        ax.legend(fontsize="small")
    if title:
        ax.set_title(title)
    return fig

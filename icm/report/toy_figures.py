"""Matplotlib figures of the toy models: Example 1 kernels and extrapolations (Fig. 2b),
gradient trajectories on c = ab (Fig. 3a) and Fourier coefficient paths (Fig. 3b)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # Agg canvas: no display, no global pyplot state

__all__ = ["extrapolation_figure", "trajectory_figure", "fourier_paths_figure", "save_figure"]


def _image(ax, img: np.ndarray, title: str, shift: Sequence[int] = (0, 0)) -> None:
    img = np.roll(np.real(img), tuple(shift), axis=(-2, -1))
    ax.imshow(img, cmap="gray", interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.set_xticks([])
    ax.set_yticks([])


def extrapolation_figure(
    solutions: Mapping[str, tuple[np.ndarray, np.ndarray]],
    templates: Mapping[str, Mapping[int, np.ndarray]],
    offsets: Mapping[int, Sequence[int]],
    shift: Sequence[int] = (0, 0),
) -> Figure:
    """Fig. 2b: one row per solution (name -> (k1, k2)) showing k1, k2 and the templates
    k2 ⊗ (g·k1) of its extrapolated class (eq. 6) for each g in ``templates[name]``
    (g = 1 is the fitted data); ``offsets[g]`` is where g moves the second Dirac of the true
    k1. Images are circularly shifted by ``shift`` for display."""
    names = list(solutions)
    group = list(next(iter(templates.values())))
    ncols = 2 + len(group)
    fig = Figure(figsize=(1.9 * ncols, 2.0 * len(names) + 0.3), layout="constrained")
    axes = fig.subplots(len(names), ncols, squeeze=False)
    for row, name in enumerate(names):
        k1, k2 = solutions[name]
        _image(axes[row, 0], k1, f"{name}: k1", shift)
        _image(axes[row, 1], k2, f"{name}: k2", shift)
        for col, g in enumerate(group, start=2):
            label = "data (g = 1)" if g == 1 else f"g = {g}, offset {tuple(offsets[g])}"
            _image(axes[row, col], templates[name][g], label, shift)
    fig.suptitle("Example 1: fitted solutions and their extrapolations k2 ⊗ (g·k1)", fontsize=9)
    return fig


def trajectory_figure(
    c: float,
    ctgd_paths: Sequence[np.ndarray],
    sgd_path: np.ndarray,
    asgd_path: np.ndarray,
) -> Figure:
    """Fig. 3a: paths in the (a, b) plane of CTGD (red, eq. 21-22), SGD (green, Alg. 1) and
    ASGD (blue, Alg. 2) on |c - ab|², with the solution set ab = c; dots mark the starts.
    Paths are arrays of shape (steps, 2)."""
    fig = Figure(figsize=(5.0, 5.0), layout="constrained")
    ax = fig.subplots()
    top = 1.05 * max(float(np.max(p)) for p in [*ctgd_paths, sgd_path, asgd_path])
    a = np.linspace(c / top, top, 400)
    ax.plot(a, c / a, color="black", lw=1, label="solution set ab = c")
    ax.plot([0, top], [0, top], color="gray", lw=0.8, ls=":", label="a = b")
    for i, path in enumerate(ctgd_paths):
        ax.plot(path[:, 0], path[:, 1], color="tab:red", lw=1.5, label="CTGD" if i == 0 else None)
        ax.plot(*path[0], "o", color="tab:red")
    for path, color, label in ((asgd_path, "tab:blue", "ASGD"), (sgd_path, "tab:green", "SGD")):
        ax.plot(path[:, 0], path[:, 1], color=color, lw=0.6, alpha=0.8, label=label)
        ax.plot(*path[0], "o", color=color)
        ax.plot(*path[-1], "s", color=color, markeredgecolor="black")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_aspect("equal")
    ax.set_xlabel("a")
    ax.set_ylabel("b")
    ax.set_title(f"Gradient descent on |c - ab|², c = {c:g} (squares: final points)", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def fourier_paths_figure(
    k1_hat: np.ndarray,
    k2_hat: np.ndarray,
    steps: np.ndarray,
    tracked: Sequence[tuple[int, int]],
) -> Figure:
    """Fig. 3b: SGD paths of DFT coefficients of k1 and k2 (recorded arrays of shape
    (R, d, d) at the given ``steps``) for the ``tracked`` frequencies in the complex plane,
    the largest gap max_u ||k1^(u)|² - |k2^(u)|²| against the step, and the initial and
    final kernels."""
    fig = Figure(figsize=(11.0, 4.2), layout="constrained")
    grid = fig.add_gridspec(2, 4, width_ratios=[1, 1, 2.4, 2.4])
    kernels = {
        "k1 start": k1_hat[0], "k2 start": k2_hat[0], "k1 end": k1_hat[-1], "k2 end": k2_hat[-1]
    }
    for i, (title, coef) in enumerate(kernels.items()):
        _image(fig.add_subplot(grid[i // 2, i % 2]), np.fft.ifft2(coef), title)
    ax = fig.add_subplot(grid[:, 2])
    colors = [f"C{i}" for i in range(len(tracked))]
    for (u, v), color in zip(tracked, colors, strict=True):
        for coef, style, name in ((k1_hat, "-", "k1^"), (k2_hat, "--", "k2^")):
            path = coef[:, u, v]
            ax.plot(path.real, path.imag, style, color=color, lw=0.8, label=f"{name}({u},{v})")
            ax.plot(path.real[0], path.imag[0], "o", color=color, ms=4)
    ax.axhline(0, color="gray", lw=0.5)
    ax.axvline(0, color="gray", lw=0.5)
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("real part")
    ax.set_ylabel("imaginary part")
    ax.set_title("coefficient paths (dots: start)", fontsize=9)
    ax.legend(fontsize=6, ncol=2)
    ax = fig.add_subplot(grid[:, 3])
    gap = np.abs(np.abs(k1_hat) ** 2 - np.abs(k2_hat) ** 2).max(axis=(-2, -1))
    ax.semilogy(steps, gap, color="black")
    ax.set_xlabel("SGD step")
    ax.set_title("max over frequencies of | |k1^|² - |k2^|² |", fontsize=9)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 120) -> Path:
    """Write ``fig`` as a PNG at ``path`` (creating folders) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path

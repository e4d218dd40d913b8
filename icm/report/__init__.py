"""Figures and reports for runs: plotting functions used by callbacks and command-line tools."""

from icm.report.figures import (
    image_grid,
    save_figure,
    save_image,
    scale_bars,
    sdr_histograms,
    stretch_grid,
    stretch_mse_curves,
    to_uint8,
)

__all__ = [
    "image_grid",
    "save_figure",
    "save_image",
    "scale_bars",
    "sdr_histograms",
    "stretch_grid",
    "stretch_mse_curves",
    "to_uint8",
]

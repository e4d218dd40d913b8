"""Spectral Density Ratio (SDR) between filters and the maps they filter (paper eq. 9, 16, 24),
the SDR penalty (eq. 17) and the trace ratio (eq. 11)."""

from __future__ import annotations

import torch
from torch import Tensor


def spectral_density_ratio(kernel_power: Tensor, cause_power: Tensor) -> Tensor:
    """SDR from power spectra on a common frequency grid (eq. 9).

    rho = <|k^|^2 P> / (<|k^|^2> <P>), with <.> the mean over the last two (frequency)
    dimensions. Leading dimensions broadcast.
    """
    num = (kernel_power * cause_power).mean(dim=(-2, -1))
    return num / (kernel_power.mean(dim=(-2, -1)) * cause_power.mean(dim=(-2, -1)))

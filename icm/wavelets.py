"""Haar wavelet scale decomposition of image differences (paper sec. 5.2.1, Fig. 6c-d).

The stretch probe compares a network's output after an intervention with the stretched
output; this module splits that difference image into wavelet scales so the mismatch can
be read scale by scale. Scale 1 is the coarsest detail band, scale J the finest
(DESIGN.md "wavelet scale"). The transform is PyWavelets' 2-D Haar DWT in
``"periodization"`` mode, which is orthonormal on images whose sides are divisible by
``2**J``: the squared coefficients of all bands add up to the squared pixels (Parseval).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pywt
import torch

__all__ = ["ScaleReport", "haar_scales", "max_haar_level", "scale_components"]

_WAVELET = "haar"
_MODE = "periodization"
_AXES = (-2, -1)


@dataclass(frozen=True)
class ScaleReport:
    """Energy and MSE of a difference-image batch, per Haar scale, averaged over the batch.

    Detail scales are indexed ``0 .. J-1`` in the arrays and stand for scales ``1 .. J``
    (index 0 = scale 1 = coarsest detail band, index J-1 = scale J = finest). The
    approximation (lowest-pass) band left after J levels is **not** one of these scales: it
    is reported separately in the ``approx_*`` fields, so that

        approx_energy + energy.sum() == total_energy          (Parseval, orthonormal Haar)

    and the same per channel. Energy of a band = sum of squares of its coefficients (the
    three orientations H, V, D of a detail scale together), summed over the channels for
    the totals, averaged over the images of the batch. MSE = energy / number of values:
    ``H*W`` per channel and ``C*H*W`` in total, so ``approx_mse + mse.sum() == total_mse``,
    the plain mean of the squared difference over channels and pixels.
    """

    levels: int
    image_shape: tuple[int, int, int]
    energy: np.ndarray
    energy_per_channel: np.ndarray
    approx_energy: float
    approx_energy_per_channel: np.ndarray
    total_energy: float
    total_energy_per_channel: np.ndarray

    @property
    def mse(self) -> np.ndarray:
        """Per-scale MSE over channels and pixels, shape (J,)."""
        return self.energy / float(np.prod(self.image_shape))

    @property
    def mse_per_channel(self) -> np.ndarray:
        """Per-scale, per-channel MSE over pixels, shape (J, C)."""
        return self.energy_per_channel / float(np.prod(self.image_shape[1:]))

    @property
    def approx_mse(self) -> float:
        """MSE carried by the approximation band (over channels and pixels)."""
        return self.approx_energy / float(np.prod(self.image_shape))

    @property
    def total_mse(self) -> float:
        """Mean squared difference over channels and pixels, averaged over the batch."""
        return self.total_energy / float(np.prod(self.image_shape))

    def to_dict(self) -> dict[str, object]:
        """Plain-Python view (lists and floats), ready for JSON logs."""
        return {
            "levels": self.levels,
            "energy_per_scale": self.energy.tolist(),
            "mse_per_scale": self.mse.tolist(),
            "energy_per_scale_per_channel": self.energy_per_channel.tolist(),
            "mse_per_scale_per_channel": self.mse_per_channel.tolist(),
            "approx_energy": self.approx_energy,
            "approx_mse": self.approx_mse,
            "total_energy": self.total_energy,
            "total_mse": self.total_mse,
        }


def max_haar_level(height: int, width: int) -> int:
    """Largest J for which ``height`` and ``width`` are both divisible by ``2**J``.

    Up to that depth every level halves even-sized arrays, so the periodized Haar DWT stays
    orthonormal; for powers of two it equals ``pywt.dwt_max_level(min(height, width), "haar")``.
    """
    level = 0
    while height % 2 == 0 and width % 2 == 0 and height > 1 and width > 1:
        height, width, level = height // 2, width // 2, level + 1
    return level


def _as_batch(diff: torch.Tensor | np.ndarray) -> np.ndarray:
    """Difference batch as a float64 ndarray of shape (B, C, H, W)."""
    if isinstance(diff, torch.Tensor):
        diff = diff.detach().to("cpu", torch.float64).numpy()
    array = np.asarray(diff, dtype=np.float64)
    if array.ndim != 4:
        raise ValueError(f"diff must have shape (B, C, H, W), got shape {array.shape}")
    return array


def _resolve_levels(levels: int | None, height: int, width: int) -> int:
    deepest = max_haar_level(height, width)
    if deepest < 1:
        raise ValueError(
            f"diff of size {height}x{width} admits no Haar level: both sides must be even"
        )
    if levels is None:
        return deepest
    if isinstance(levels, bool) or not isinstance(levels, (int, np.integer)):
        raise ValueError(f"levels must be a positive integer or None, got {levels!r}")
    if not 1 <= levels <= deepest:
        raise ValueError(
            f"levels must be in 1..{deepest} for {height}x{width} images "
            f"(both sides divisible by 2**levels), got {levels}"
        )
    return int(levels)


def _decompose(array: np.ndarray, levels: int | None) -> tuple[int, list]:
    J = _resolve_levels(levels, array.shape[-2], array.shape[-1])
    # coeffs = [cA_J, (cH_1, cV_1, cD_1), ..., (cH_J, cV_J, cD_J)] in *our* numbering:
    # pywt lists detail tuples coarsest first, so coeffs[j] is scale j (1 = coarsest).
    coeffs = pywt.wavedec2(array, _WAVELET, mode=_MODE, level=J, axes=_AXES)
    return J, coeffs


def haar_scales(diff: torch.Tensor | np.ndarray, levels: int | None = None) -> ScaleReport:
    """Per-scale energy and MSE of a difference batch ``diff`` (B, C, H, W) (Fig. 6c-d).

    ``levels`` is the number J of detail scales (default: the deepest orthonormal level,
    :func:`max_haar_level`; 6 for 64x64 images). Scale 1 is the coarsest detail band, J the
    finest; the approximation band goes to ``approx_*`` (see :class:`ScaleReport`).
    """
    array = _as_batch(diff)
    J, coeffs = _decompose(array, levels)
    batch, channels, height, width = array.shape

    def band_energy(band: np.ndarray) -> np.ndarray:
        # Sum of squares over the band's pixels, then average over the batch -> (C,).
        return np.square(band).sum(axis=_AXES).mean(axis=0)

    per_channel = np.stack([sum(band_energy(b) for b in coeffs[j]) for j in range(1, J + 1)])
    approx = band_energy(coeffs[0])
    total = band_energy(array)
    return ScaleReport(
        levels=J,
        image_shape=(channels, height, width),
        energy=per_channel.sum(axis=1),
        energy_per_channel=per_channel,
        approx_energy=float(approx.sum()),
        approx_energy_per_channel=approx,
        total_energy=float(total.sum()),
        total_energy_per_channel=total,
    )


def scale_components(diff: torch.Tensor | np.ndarray, levels: int | None = None) -> np.ndarray:
    """The difference restricted to each Haar band, shape (J+1, B, C, H, W) (Fig. 6c).

    Component 0 is the approximation band, component j (1..J) the detail scale j (1 =
    coarsest), each the inverse transform of that band alone with every other band zeroed.
    The transform is linear, so the components sum to ``diff``.
    """
    array = _as_batch(diff)
    J, coeffs = _decompose(array, levels)
    zeroed = [np.zeros_like(coeffs[0])] + [tuple(np.zeros_like(b) for b in d) for d in coeffs[1:]]
    components = []
    for band in range(J + 1):
        only = list(zeroed)
        only[band] = coeffs[band]
        components.append(pywt.waverec2(only, _WAVELET, mode=_MODE, axes=_AXES))
    return np.stack(components)

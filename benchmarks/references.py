"""Reference SDR implementations that `icm.spectral.sdr` is timed against: a naive Python loop
over (filter, map) pairs, and every kernel padded to the layer's grid and Fourier transformed
(paper eq. 9, 16, 24 written out directly)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from icm.spectral import spectral_density_ratio


def grid_size(
    map_size: Sequence[int], stride: tuple[int, int], transposed: bool
) -> tuple[int, int]:
    """The frequency grid of a layer: ``s*h x s*w`` for a transposed stride (eq. 24), the
    cause's own ``h x w`` for a ``Conv2d``."""
    h, w = map_size
    return (stride[0] * h, stride[1] * w) if transposed else (h, w)


def kernel_on_grid(kernel: Tensor, grid: tuple[int, int]) -> Tensor:
    """Kernels ``(..., kh, kw)`` zero-padded to ``grid``; taps beyond the grid wrap around, so
    that the DFT is the kernel's DTFT sampled on the grid."""
    n1, n2 = grid
    kh, kw = kernel.shape[-2:]
    a, b = math.ceil(kh / n1), math.ceil(kw / n2)
    padded = kernel.new_zeros(*kernel.shape[:-2], a * n1, b * n2)
    padded[..., :kh, :kw] = kernel
    return padded.reshape(*kernel.shape[:-2], a, n1, b, n2).sum(dim=(-4, -2))


def _kernels(weight: Tensor, transposed: bool) -> Tensor:
    """Weight as (C_out, C_in, kh, kw) float64 (a ConvTranspose2d weight is (C_in, C_out, ...))."""
    if weight.dim() != 4:
        raise ValueError(f"weight must be a 4-D conv weight, got shape {tuple(weight.shape)}")
    kernel = weight.detach().transpose(0, 1) if transposed else weight.detach()
    return kernel.to(torch.float64)


def naive_pair_sdr(
    kernel: Tensor, cause: Tensor, stride: tuple[int, int], transposed: bool
) -> float:
    """SDR of one (filter, map) pair, literally: zero-upsample the maps ``cause`` (B, h, w) by
    the stride (transposed layers, eq. 24), average their periodograms over the batch (eq. 16),
    take the kernel's power spectrum on the same grid and form eq. 9."""
    x = cause.detach().to(torch.float64)
    if transposed and stride != (1, 1):
        up = x.new_zeros(x.shape[0], stride[0] * x.shape[1], stride[1] * x.shape[2])
        up[:, :: stride[0], :: stride[1]] = x
        x = up
    grid = tuple(x.shape[-2:])
    cause_power = torch.fft.fft2(x).abs().square().mean(dim=0)
    kernel_power = torch.fft.fft2(kernel_on_grid(kernel.to(torch.float64), grid)).abs().square()
    return float(spectral_density_ratio(kernel_power, cause_power))


def naive_sdr(
    weight: Tensor,
    inputs: Tensor,
    pairs: Sequence[tuple[int, int]],
    *,
    stride: tuple[int, int] = (1, 1),
    transposed: bool = True,
) -> Tensor:
    """:func:`naive_pair_sdr` of the given (output channel, input channel) ``pairs``, one pair
    after another in a Python loop; returns a 1-D float64 tensor in the order of ``pairs``."""
    kernel = _kernels(weight, transposed)
    values = [naive_pair_sdr(kernel[o, i], inputs[:, i], stride, transposed) for o, i in pairs]
    return torch.tensor(values, dtype=torch.float64)


def padded_sdr(
    weight: Tensor,
    inputs: Tensor,
    *,
    stride: tuple[int, int] = (1, 1),
    transposed: bool = True,
) -> Tensor:
    """SDR (C_out, C_in) of every pair at once, the direct way: every kernel padded to the
    layer's grid and transposed by FFT, the batch-averaged periodogram of each cause channel
    (eq. 16) tiled by the stride (eq. 24), eq. 9 over the whole (C_out, C_in, grid) block."""
    kernel = _kernels(weight, transposed)
    x = inputs.detach().to(torch.float64)
    grid = grid_size(x.shape[-2:], stride, transposed)
    kernel_power = torch.fft.fft2(kernel_on_grid(kernel, grid)).abs().square()
    cause_power = torch.fft.fft2(x).abs().square().mean(dim=0)
    if transposed:
        cause_power = cause_power.repeat(1, stride[0], stride[1])
    return spectral_density_ratio(kernel_power, cause_power[None])


def spread_pairs(c_out: int, c_in: int, n: int) -> list[tuple[int, int]]:
    """Up to ``n`` (output, input) channel pairs spread evenly over all ``c_out * c_in``."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    total = c_out * c_in
    flat = torch.linspace(0, total - 1, min(n, total)).round().long().unique().tolist()
    return [divmod(int(k), c_in) for k in flat]

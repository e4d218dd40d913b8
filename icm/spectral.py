"""Spectral Density Ratio (SDR) between filters and the maps they filter (paper eq. 9, 16, 24),
the SDR penalty (eq. 17) and the trace ratio (eq. 11).

Conventions (DESIGN.md, "SDR of a strided layer"). For each (output channel ``o``, input
channel ``i``) pair of a convolution, the *filter* is the kernel slice ``k`` linking input
map ``i`` to output map ``o`` and the *cause* is input map ``i`` over a batch. Spectra live
on one grid of ``N = N1 x N2`` frequencies:

- ``nn.ConvTranspose2d`` with stride ``s``: the ``s*h x s*w`` output grid; the cause is the
  zero-upsampled map ``x^s`` whose periodogram is the ``h x w`` periodogram tiled
  ``s x s`` (App. B.5, eq. 24).
- ``nn.Conv2d`` (any stride): the cause's own ``h x w`` grid; subsampling is a fixed step
  after the mechanism.

A kernel larger than the grid is the kernel's DFT sampled on the grid (taps wrap
circularly). Cross-correlation versus convolution does not matter: ``|k^|^2`` is invariant
to flipping the kernel. The batch average of periodograms is Bartlett's estimate (eq. 16).

How it is computed ("Where the speed is"). With ``A_k`` the kernel's autocorrelation and
``R`` the batch-averaged circular autocorrelation of the cause on the grid
(Wiener-Khinchin),

    <|k^|^2 P> = sum_lag A_k(lag) R(lag) = sum_{p,q} k_p k_q R(q - p),
    <|k^|^2>   = sum_{p,q} k_p k_q [q - p = 0 on the grid]   (Parseval; = sum_p k_p^2
                 unless taps wrap),
    <P>        = R(0)                                          (Parseval),

with ``<.>`` the mean over the ``N`` frequencies and ``p, q`` kernel taps. Lags are bounded
by the kernel size, whatever the map size, and ``R`` is shared by all output channels: each
pair costs one ``(kh*kw)^2`` quadratic form with the Toeplitz matrix of ``R``. For a
transposed stride ``s``, ``R`` of ``x^s`` is zero except at lags that are multiples of ``s``.

Undefined pairs. A pair whose kernel slice has zero energy on the grid, or whose cause
channel has zero energy over the batch, has no SDR (0/0): it is NaN in :func:`sdr`, counted
and dropped by :func:`sdr_stats`, and contributes 0 to :func:`sdr_penalty`. "Zero" means at
most ``1e-12`` times the energy of the kernel's taps (a kernel whose wrapped taps cancel)
or of the cause before mean removal (a constant map with ``center=True``); without wrapping
or centring that is exactly zero.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

# Energies at or below this fraction of their reference are zero (see module docstring).
_ZERO_ENERGY = 1e-12
# Largest number of elements of one intermediate tensor (64 MiB of complex128).
_CHUNK_ELEMENTS = 1 << 22


def spectral_density_ratio(kernel_power: Tensor, cause_power: Tensor) -> Tensor:
    """SDR from power spectra on a common frequency grid (eq. 9).

    rho = <|k^|^2 P> / (<|k^|^2> <P>), with <.> the mean over the last two (frequency)
    dimensions. Leading dimensions broadcast.
    """
    num = (kernel_power * cause_power).mean(dim=(-2, -1))
    return num / (kernel_power.mean(dim=(-2, -1)) * cause_power.mean(dim=(-2, -1)))


# --------------------------------------------------------------------------- validation


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    """``value`` as a pair of positive ints (an int means the same on both axes)."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v >= 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of positive ints, got {value!r}")
    return pair  # type: ignore[return-value]


def _layer_spec(layer: nn.Module) -> tuple[Tensor, tuple[int, int], bool]:
    """Weight, stride and kind (transposed or not) of a supported convolution layer."""
    if isinstance(layer, nn.ConvTranspose2d):
        transposed = True
    elif isinstance(layer, nn.Conv2d):
        transposed = False
    else:
        raise TypeError(
            f"layer must be an nn.Conv2d or nn.ConvTranspose2d, got {type(layer).__name__}"
        )
    if layer.groups != 1:
        raise ValueError(f"layer has groups={layer.groups}; the SDR supports groups=1 only")
    if tuple(layer.dilation) != (1, 1):
        raise ValueError(
            f"layer has dilation={tuple(layer.dilation)}; the SDR supports dilation=1 only"
        )
    return layer.weight, _pair(tuple(layer.stride), "layer.stride"), transposed


def _prepare(
    weight: Tensor, inputs: Tensor, stride: int | Sequence[int], transposed: bool
) -> tuple[Tensor, Tensor, tuple[int, int]]:
    """Validate raw arguments; return the kernel as (C_out, C_in, kh, kw), inputs, stride."""
    if not isinstance(weight, Tensor) or weight.dim() != 4 or not weight.is_floating_point():
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"weight must be a real 4-D tensor (a 2-D conv weight), got {shape}")
    if not isinstance(inputs, Tensor) or inputs.dim() != 4 or not inputs.is_floating_point():
        shape = tuple(inputs.shape) if isinstance(inputs, Tensor) else type(inputs).__name__
        raise ValueError(f"inputs must be a real tensor of shape (B, C_in, h, w), got {shape}")
    if min(inputs.shape) < 1:
        raise ValueError(f"inputs must be non-empty, got shape {tuple(inputs.shape)}")
    stride = _pair(stride, "stride")
    # PyTorch layouts: Conv2d (C_out, C_in, kh, kw); ConvTranspose2d (C_in, C_out, kh, kw).
    kernel = weight.transpose(0, 1) if transposed else weight
    if inputs.shape[1] != kernel.shape[1]:
        raise ValueError(
            f"inputs has {inputs.shape[1]} channels but the weight of shape "
            f"{tuple(weight.shape)} expects {kernel.shape[1]} input channels"
        )
    return kernel, inputs.to(weight.device), stride


# ------------------------------------------------------------------- the lag computation


def _cause_autocorrelation(inputs: Tensor, center: bool) -> tuple[Tensor, Tensor]:
    """Batch-averaged circular autocorrelation R (C_in, h, w) of each cause channel on its
    own h x w grid (Bartlett average of periodograms, eq. 16, by Wiener-Khinchin), and the
    channel energy before mean removal, the reference for "zero" (float64, detached)."""
    batch, channels, h, w = inputs.shape
    inputs = inputs.detach()
    power = torch.zeros(channels, h, w // 2 + 1, dtype=torch.float64, device=inputs.device)
    raw_energy = torch.zeros(channels, dtype=torch.float64, device=inputs.device)
    c_step = max(1, min(channels, _CHUNK_ELEMENTS // (h * w)))
    b_step = max(1, _CHUNK_ELEMENTS // (c_step * h * w))
    for c0 in range(0, channels, c_step):
        for b0 in range(0, batch, b_step):
            # FFT in the maps' own precision (float32 for activations: several times faster
            # than a float64 cast, relative error ~1e-7), |x^|^2 as re^2 + im^2 (no sqrt);
            # chunks accumulated in float64.
            x = inputs[b0 : b0 + b_step, c0 : c0 + c_step]
            if x.dtype not in (torch.float32, torch.float64):
                x = x.float()
            if center:
                raw_energy[c0 : c0 + c_step] += x.square().sum(dim=(0, 2, 3)).double()
                x = x - x.mean(dim=(-2, -1), keepdim=True)
            spectrum = torch.fft.rfft2(x)
            power[c0 : c0 + c_step] += (spectrum.real.square() + spectrum.imag.square()).sum(
                dim=0
            ).double()
    # R(lag) = sum_n x(n) x(n + lag) = ifft(|x^|^2); <P> = R(0) = mean energy.
    autocorr = torch.fft.irfft2(power / batch, s=(h, w))
    if not center:  # without mean removal the energy before it is R(0) itself
        return autocorr, autocorr[:, 0, 0].clone()
    return autocorr, raw_energy / batch


def _tap_lags(size: int, stride: int, maps: int) -> tuple[Tensor, Tensor, Tensor]:
    """For one axis with ``size`` taps: the cause-grid index of lag q - p for every tap pair
    (p, q), whether that lag meets the (upsampled) cause, and whether it is 0 on the grid.

    The grid has ``stride * maps`` points; the zero-upsampled cause (eq. 24) is nonzero at
    lags that are multiples of ``stride`` only, where R(lag) = R_x(lag / stride mod maps).
    """
    taps = torch.arange(size)
    lag = taps[None, :] - taps[:, None]
    on_cause = lag.remainder(stride) == 0
    index = lag.div(stride, rounding_mode="floor").remainder(maps)
    at_zero = lag.remainder(stride * maps) == 0
    return index, on_cause, at_zero


def _lag_form(
    kernel: Tensor, inputs: Tensor, stride: tuple[int, int], transposed: bool, center: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per pair: numerator <|k^|^2 P>, kernel energy <|k^|^2> on the grid (both (C_out, C_in),
    differentiable w.r.t. ``kernel``, float64), cause energy <P> = R(0) (C_in,) and the mask
    of defined pairs. ``kernel`` is (C_out, C_in, kh, kw)."""
    c_out, c_in, kh, kw = kernel.shape
    h, w = inputs.shape[-2:]
    sh, sw = stride if transposed else (1, 1)
    autocorr, raw_energy = _cause_autocorrelation(inputs, center)

    idx_h, on_h, zero_h = _tap_lags(kh, sh, h)
    idx_w, on_w, zero_w = _tap_lags(kw, sw, w)
    dev = autocorr.device
    idx_h, on_h, zero_h, idx_w, on_w, zero_w = (
        t.to(dev) for t in (idx_h, on_h, zero_h, idx_w, on_w, zero_w)
    )
    # Toeplitz matrix of R: toeplitz[i, (p1, p2), (q1, q2)] = R_i(q - p) (eq. 24 lags).
    toeplitz = autocorr[:, idx_h[:, None, :, None], idx_w[None, :, None, :]]
    toeplitz = toeplitz * (on_h[:, None, :, None] & on_w[None, :, None, :])
    taps = kh * kw
    toeplitz = toeplitz.reshape(c_in, taps, taps)
    # Tap pairs at lag 0 on the grid: the identity unless the kernel wraps around the grid.
    wrap = (zero_h[:, None, :, None] & zero_w[None, :, None, :]).reshape(taps, taps)
    wraps = bool(wrap.sum() > taps)

    flat = kernel.to(torch.float64).reshape(c_out, c_in, taps)
    o_step = max(1, _CHUNK_ELEMENTS // (c_in * taps))
    numerators, energies = [], []
    for o0 in range(0, c_out, o_step):
        k = flat[o0 : o0 + o_step]
        # sum_{p,q} k_p k_q R_i(q - p): one batched matrix product over input channels.
        numerators.append((torch.einsum("oip,ipq->oiq", k, toeplitz) * k).sum(-1))
        if wraps:
            energies.append((torch.einsum("oip,pq->oiq", k, wrap.to(k.dtype)) * k).sum(-1))
        else:
            energies.append(k.square().sum(-1))
    numerator = torch.cat(numerators)
    kernel_energy = torch.cat(energies)

    cause_energy = autocorr[:, 0, 0]
    with torch.no_grad():
        tap_energy = flat.square().sum(-1)
        kernel_ok = kernel_energy > _ZERO_ENERGY * tap_energy
        cause_ok = cause_energy > _ZERO_ENERGY * raw_energy
        defined = kernel_ok & cause_ok[None, :]
    return numerator, kernel_energy, cause_energy, defined


# ------------------------------------------------------------------------------ public


def sdr_from_weight(
    weight: Tensor,
    inputs: Tensor,
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = True,
    center: bool = False,
) -> Tensor:
    """SDR of every (output channel, input channel) pair of a 2-D convolution weight
    (eq. 16; eq. 24 for a transposed stride), as a (C_out, C_in) tensor.

    Args:
        weight: PyTorch layout, ``(C_in, C_out, kh, kw)`` when ``transposed`` (a
            ``ConvTranspose2d`` weight), ``(C_out, C_in, kh, kw)`` otherwise (``Conv2d``).
        inputs: the maps entering the layer (its cause), ``(B, C_in, h, w)``.
        stride: the layer's stride (int or pair). It sets the ``s*h x s*w`` grid of a
            transposed layer; a ``Conv2d`` is measured on the ``h x w`` input grid
            whatever its stride (the subsampling follows the mechanism).
        transposed: whether ``weight`` belongs to a transposed convolution.
        center: remove each map's spatial mean first (the paper does not).

    Returns:
        rho[o, i] = <1/B sum_b |k^_oi x^_ib|^2> / (<|k^_oi|^2> <1/B sum_b |x^_ib|^2>),
        NaN for undefined pairs (zero-energy kernel slice or cause channel); detached, in
        the promoted dtype of ``weight`` and ``inputs``.

    Raises:
        ValueError: bad shapes or stride, or every pair undefined ("all ... zero ...").
    """
    kernel, inputs, stride = _prepare(weight, inputs, stride, transposed)
    with torch.no_grad():
        numerator, kernel_energy, cause_energy, defined = _lag_form(
            kernel, inputs, stride, transposed, center
        )
        if not bool(defined.any()):
            raise ValueError(
                "sdr: all (filter, map) pairs are undefined: every kernel slice or every "
                "cause channel has zero energy"
            )
        ratio = numerator / (kernel_energy * cause_energy[None, :])
        ratio = torch.where(defined, ratio, torch.full_like(ratio, float("nan")))
    return ratio.to(torch.promote_types(weight.dtype, inputs.dtype))


def sdr(layer: nn.Module, inputs: Tensor, *, center: bool = False) -> Tensor:
    """SDR (eq. 16, eq. 24 for a transposed stride) of every (output channel, input channel)
    pair of an ``nn.Conv2d`` or ``nn.ConvTranspose2d`` given its input ``inputs``
    ``(B, C_in, h, w)``; returns ``(C_out, C_in)``. Stride and kind are read from the
    layer; see :func:`sdr_from_weight` and the module docstring for the conventions.

    Raises:
        TypeError: ``layer`` is not a 2-D (transposed) convolution.
        ValueError: ``groups != 1``, ``dilation != 1``, a wrong channel count, or every
            pair undefined.
    """
    weight, stride, transposed = _layer_spec(layer)
    return sdr_from_weight(weight, inputs, stride=stride, transposed=transposed, center=center)


def sdr_penalty_from_weight(
    weight: Tensor,
    inputs: Tensor,
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = True,
    center: bool = False,
) -> Tensor:
    """SDR penalty (eq. 17) of a raw weight, summed over all (filter, map) pairs.

    For each pair, ( <|k^|^2 (P / <P> - 1)> )^2 = ( <|k^|^2> (rho - 1) )^2, with P the
    Bartlett periodogram of the cause on the layer's grid (eq. 24 for a transposed stride).
    The cause spectra are detached: the gradient flows into ``weight`` only. Pairs with a
    dead cause channel contribute 0 (a zero kernel slice contributes 0 by itself), so a
    layer whose every pair is undefined gives 0. Arguments as in :func:`sdr_from_weight`;
    returns a scalar in ``weight``'s dtype.
    """
    kernel, inputs, stride = _prepare(weight, inputs, stride, transposed)
    numerator, kernel_energy, cause_energy, defined = _lag_form(
        kernel, inputs, stride, transposed, center
    )
    # A nonzero stand-in for dead channels keeps their (masked) gradient finite.
    safe_energy = torch.where(cause_energy > 0, cause_energy, torch.ones_like(cause_energy))
    # eq. 17: <|k^|^2 P> / <P> - <|k^|^2>, squared and summed over pairs.
    term = numerator / safe_energy[None, :] - kernel_energy
    term = torch.where(defined, term, torch.zeros_like(term))
    return term.square().sum().to(weight.dtype)


def sdr_penalty(layer: nn.Module, inputs: Tensor, *, center: bool = False) -> Tensor:
    """SDR penalty (eq. 17) of an ``nn.Conv2d`` / ``nn.ConvTranspose2d`` given its input
    ``inputs`` ``(B, C_in, h, w)``: a scalar differentiable w.r.t. ``layer.weight`` and not
    w.r.t. ``inputs``. See :func:`sdr_penalty_from_weight`."""
    weight, stride, transposed = _layer_spec(layer)
    return sdr_penalty_from_weight(
        weight, inputs, stride=stride, transposed=transposed, center=center
    )


def trace_ratio(a: Tensor, b: Tensor) -> float:
    """Trace ratio (eq. 11): TR = tau[A B B^T A^T] / (tau[A A^T] tau[B B^T]), tau the
    normalized trace (1/d) Tr.

    ``a`` and ``b`` are either 1-D tensors holding the diagonals of diagonal matrices
    (real or complex; then TR = mean(|a|^2 |b|^2) / (mean|a|^2 mean|b|^2)) or square
    ``d x d`` matrices (``^T`` is the conjugate transpose for complex ones). Applied to the
    DFTs of two kernels it equals their SDR (eq. 14).
    """
    for name, m in (("a", a), ("b", b)):
        if not isinstance(m, Tensor) or m.dim() not in (1, 2) or m.numel() == 0:
            raise ValueError(f"{name} must be a non-empty 1-D (diagonal) or 2-D (square) tensor")
        if m.dim() == 2 and m.shape[0] != m.shape[1]:
            raise ValueError(f"{name} must be square, got shape {tuple(m.shape)}")
    if a.shape != b.shape:
        raise ValueError(
            f"a and b must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    dtype = torch.complex128 if (a.is_complex() or b.is_complex()) else torch.float64
    a, b = a.detach().to(dtype), b.detach().to(dtype)
    if a.dim() == 1:
        pa, pb = a.abs().square(), b.abs().square()
        num, ea, eb = (pa * pb).mean(), pa.mean(), pb.mean()
    else:
        ab = a @ b
        num = (ab @ ab.mH).diagonal().real.mean()
        ea, eb = (a @ a.mH).diagonal().real.mean(), (b @ b.mH).diagonal().real.mean()
    for name, energy in (("a", ea), ("b", eb)):
        if float(energy) == 0.0:
            raise ValueError(f"{name} has zero energy: the trace ratio is undefined")
    return float(num / (ea * eb))


def sdr_stats(
    values: Tensor | np.ndarray | Sequence[float],
    *,
    bins: int | Sequence[float] = 50,
    value_range: tuple[float, float] | None = None,
) -> dict[str, float | int]:
    """Summary of SDR values, ignoring undefined (NaN, and any other non-finite) entries.

    Returns plain Python numbers (JSON-ready): ``mean``, ``std`` (population, ddof=0),
    ``median``, ``mode``, ``n`` (number of finite values) and ``undefined`` (number of
    non-finite values). ``mode`` is the centre of the fullest bin of
    ``numpy.histogram(values, bins=bins, range=value_range)``: by default 50 equal-width
    bins spanning the finite values' min to max (values outside ``value_range`` are left
    out of the histogram only); the first such bin on ties. With no finite value the four
    statistics are NaN.
    """
    if isinstance(values, Tensor):
        array = values.detach().to("cpu", torch.float64).numpy().ravel()
    else:
        array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[np.isfinite(array)]
    n, undefined = int(finite.size), int(array.size - finite.size)
    if n == 0:
        nan = float("nan")
        return {"mean": nan, "std": nan, "median": nan, "mode": nan, "n": 0, "undefined": undefined}
    counts, edges = np.histogram(finite, bins=bins, range=value_range)
    fullest = int(np.argmax(counts))
    return {
        "mean": float(finite.mean()),
        "std": float(finite.std()),
        "median": float(np.median(finite)),
        "mode": float((edges[fullest] + edges[fullest + 1]) / 2),
        "n": n,
        "undefined": undefined,
    }

"""Tests of icm.spectral: SDR (eq. 9, 16, 24) against a brute-force Fourier reference, its
invariances and known cases, the SDR penalty (eq. 17), the trace ratio (eq. 11, 14) and the
summary statistics."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icm.spectral import (
    sdr,
    sdr_from_weight,
    sdr_penalty,
    sdr_penalty_from_weight,
    sdr_stats,
    spectral_density_ratio,
    trace_ratio,
)

# ------------------------------------------------------------------ brute-force reference


def _dft_matrix(grid: int, taps: int) -> torch.Tensor:
    """exp(-2 pi i u n / grid) for frequencies u < grid and taps n < taps: the kernel's DFT
    sampled on the grid, by definition (taps beyond the grid wrap by themselves)."""
    u = torch.arange(grid, dtype=torch.float64)[:, None]
    n = torch.arange(taps, dtype=torch.float64)[None, :]
    return torch.exp(-2j * math.pi * u * n / grid)


def reference_spectra(weight, inputs, stride, transposed, center=False):
    """Per pair |k^|^2 on the grid (C_out, C_in, N1, N2) and Bartlett periodograms of the
    causes (C_in, N1, N2): explicit zero upsampling, explicit DFTs, no lag tricks."""
    w = weight.detach().double()
    w = w.transpose(0, 1) if transposed else w
    x = inputs.detach().double()
    if center:
        x = x - x.mean(dim=(-2, -1), keepdim=True)
    s1, s2 = stride if transposed else (1, 1)
    b, c_in, h, wd = x.shape
    up = torch.zeros(b, c_in, s1 * h, s2 * wd, dtype=torch.float64)
    up[..., ::s1, ::s2] = x
    n1, n2 = up.shape[-2:]
    periodogram = torch.fft.fft2(up).abs().square().mean(dim=0)
    e1, e2 = _dft_matrix(n1, w.shape[2]), _dft_matrix(n2, w.shape[3])
    kernel_power = torch.empty(w.shape[0], w.shape[1], n1, n2, dtype=torch.float64)
    for o in range(w.shape[0]):
        for i in range(w.shape[1]):
            kernel_power[o, i] = (e1 @ w[o, i].to(torch.complex128) @ e2.T).abs().square()
    return kernel_power, periodogram


def reference_sdr(weight, inputs, stride, transposed, center=False):
    """Eq. 16 / 24 pair by pair in a Python loop; NaN where a spectrum has zero energy."""
    kernel_power, periodogram = reference_spectra(weight, inputs, stride, transposed, center)
    out = torch.full(kernel_power.shape[:2], float("nan"), dtype=torch.float64)
    for o in range(out.shape[0]):
        for i in range(out.shape[1]):
            kp, p = kernel_power[o, i], periodogram[i]
            if kp.mean() > 1e-20 and p.mean() > 1e-20:
                out[o, i] = (kp * p).mean() / (kp.mean() * p.mean())
    return out


def _layer(transposed, c_in, c_out, k, stride, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    return cls(c_in, c_out, k, stride=stride, padding=0).to(dtype)


def _pair(s):
    return (s, s) if isinstance(s, int) else s


# ------------------------------------------------------------------------------ SDR core

CASES = [
    # transposed, kernel, stride, map (h, w)
    (False, 5, 1, (8, 8)),
    (False, 5, 2, (8, 8)),
    (False, 3, 1, (6, 7)),
    (False, 5, 2, (4, 4)),  # map smaller than the kernel (DCGAN discriminator's last conv)
    (False, 5, 1, (3, 2)),
    (True, 5, 1, (8, 8)),
    (True, 5, 2, (8, 8)),  # VAE decoder level: 8x8 cause, 16x16 grid
    (True, 5, 2, (2, 2)),  # 4x4 grid smaller than the kernel
    (True, 3, 2, (5, 6)),
    (True, (3, 5), (2, 1), (4, 6)),  # non-square kernel and stride
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("transposed,k,stride,hw", CASES)
def test_sdr_matches_brute_force(transposed, k, stride, hw, dtype):
    layer = _layer(transposed, 3, 4, k, stride, dtype=dtype)
    x = torch.relu(torch.randn(5, 3, *hw, dtype=dtype)) + 0.1 * torch.randn(5, 3, *hw, dtype=dtype)
    got = sdr(layer, x)
    assert got.shape == (4, 3) and got.dtype == dtype
    want = reference_sdr(layer.weight, x, _pair(stride), transposed)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=0)


@pytest.mark.parametrize("transposed,k,stride,hw", [CASES[1], CASES[6], CASES[7]])
def test_sdr_centered_matches_brute_force(transposed, k, stride, hw):
    layer = _layer(transposed, 2, 3, k, stride)
    x = torch.rand(4, 2, *hw, dtype=torch.float64) + 2.0
    got = sdr(layer, x, center=True)
    want = reference_sdr(layer.weight, x, _pair(stride), transposed, center=True)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=0)
    assert not torch.allclose(got, sdr(layer, x))  # the mean does matter


def test_sdr_from_weight_layouts():
    conv = _layer(False, 3, 4, 5, 2)
    tconv = _layer(True, 3, 4, 5, 2)
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64)
    torch.testing.assert_close(
        sdr_from_weight(conv.weight, x, stride=2, transposed=False), sdr(conv, x)
    )
    torch.testing.assert_close(
        sdr_from_weight(tconv.weight, x, stride=2, transposed=True), sdr(tconv, x)
    )
    # A Conv2d is measured on its input grid whatever the stride.
    torch.testing.assert_close(
        sdr_from_weight(conv.weight, x, stride=3, transposed=False), sdr(conv, x)
    )


def _fold(y: torch.Tensor, n1: int, n2: int) -> torch.Tensor:
    """Wrap a linear convolution's output onto an n1 x n2 torus (circular convolution)."""
    out = torch.zeros(*y.shape[:-2], n1, n2, dtype=y.dtype)
    for a in range(y.shape[-2]):
        for b in range(y.shape[-1]):
            out[..., a % n1, b % n2] += y[..., a, b]
    return out


@pytest.mark.parametrize("transposed,stride", [(False, 1), (True, 1), (True, 2)])
def test_sdr_is_output_power_ratio_of_the_real_layer(transposed, stride):
    """Eq. 9 in cause-effect form: rho = E||k (*) x^s||^2 / (||k||^2 E||x||^2), with the
    partial output computed by PyTorch's own (transposed) convolution, made circular."""
    layer = _layer(transposed, 2, 3, 5, stride)
    x = torch.randn(4, 2, 6, 6, dtype=torch.float64).cumsum(-1)  # correlated maps
    got = sdr(layer, x)
    n = 6 * stride if transposed else 6
    for o in range(3):
        for i in range(2):
            xi = x[:, i : i + 1]
            if transposed:
                k = layer.weight[i : i + 1, o : o + 1]
                y = F.conv_transpose2d(xi, k, stride=stride)  # full linear output
            else:
                k = layer.weight[o : o + 1, i : i + 1]
                y = F.conv2d(F.pad(xi, (4, 4, 4, 4)), k)  # full linear output
            y = _fold(y.detach(), n, n)
            ratio = y.square().sum() / (k.square().sum() * xi.square().sum())
            torch.testing.assert_close(got[o, i], ratio, rtol=1e-8, atol=0)


# ----------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("transposed,stride", [(False, 1), (False, 2), (True, 2)])
def test_sdr_invariances(transposed, stride):
    layer = _layer(transposed, 3, 2, 5, stride)
    x = torch.relu(torch.randn(6, 3, 8, 8, dtype=torch.float64)).cumsum(-2)
    base = sdr(layer, x)
    w = layer.weight.detach()
    kw = dict(stride=stride, transposed=transposed)
    scales = torch.tensor([0.3, 5.0, 2.0], dtype=torch.float64)[None, :, None, None]
    same = [
        sdr_from_weight(3.7 * w, x, **kw),  # kernel scale
        sdr_from_weight(w, 0.01 * x, **kw),  # map scale
        sdr_from_weight(w, scales * x, **kw),  # one scale per cause channel
        sdr_from_weight(w.flip(-1, -2), x, **kw),  # convolution vs cross-correlation
        sdr_from_weight(w, x.roll((3, 5), dims=(-2, -1)), **kw),  # circular translation
        sdr_from_weight(w, x[torch.randperm(6)], **kw),  # batch order
    ]
    for other in same:
        torch.testing.assert_close(other, base, rtol=1e-10, atol=0)
    # ... while a different kernel shape does change it (the test can fail).
    assert not torch.allclose(sdr_from_weight(w.transpose(-1, -2), x, **kw), base)


def _autocorrelation(k: torch.Tensor) -> torch.Tensor:
    """Linear autocorrelation of a 2-D kernel, lags -(k-1)..(k-1) on each axis."""
    kh, kw = k.shape
    return F.conv2d(k[None, None], k[None, None], padding=(kh - 1, kw - 1))[0, 0]


@pytest.mark.parametrize("transposed,stride", [(False, 1), (True, 2)])
def test_white_noise_gives_sdr_near_one(transposed, stride):
    """For white maps, rho - 1 = sum_{lag != 0} A(lag)/A(0) r(lag) with r the sample
    autocorrelation, Var r = 1 / (B h w): std(rho) = sqrt(2 sum_{lag != 0} (A/A(0))^2
    / (B h w)) over the lags the (upsampled) cause reaches. Every pair within 5 std."""
    batch, h = 64, 16
    layer = _layer(transposed, 4, 6, 5, stride, seed=1)
    torch.manual_seed(2)
    x = torch.randn(batch, 4, h, h, dtype=torch.float64)
    rho = sdr(layer, x)
    kernels = layer.weight.detach().transpose(0, 1) if transposed else layer.weight.detach()
    for o in range(6):
        for i in range(4):
            a = _autocorrelation(kernels[o, i])
            a = a[::stride, ::stride] if stride > 1 else a  # lags meeting x^s (centre kept)
            a0 = kernels[o, i].square().sum()
            var = 2 * ((a / a0).square().sum() - 1) / (batch * h * h)
            assert abs(rho[o, i].item() - 1) < 5 * var.sqrt().item()
    # Smooth maps through smooth (low-pass) kernels are far from white: rho well above 1.
    smooth = x.cumsum(-1).cumsum(-2)
    lowpass = layer.weight.detach().abs()
    rho_smooth = sdr_from_weight(lowpass, smooth, stride=stride, transposed=transposed)
    assert rho_smooth.min() > 1.5


@pytest.mark.parametrize(
    "transposed,stride,size,second,expect_one",
    [
        (False, 1, 16, (2, 12), True),  # offset 9: circular distance 7 >= 5
        (False, 1, 16, (2, 5), False),  # offset 2: the eyes overlap
        (True, 2, 8, (1, 4), True),  # offset 3 on the cause, 6 on the 16x16 grid
        (True, 2, 8, (2, 2), False),  # offset (1, 1) -> (2, 2) on the grid
    ],
)
def test_example_1_two_diracs(transposed, stride, size, second, expect_one):
    """Example 1 / Prop. 5: a two-Dirac map and a compact 5x5 kernel whose translated
    copies do not overlap have SDR exactly 1 (and penalty 0)."""
    x = torch.zeros(1, 1, size, size, dtype=torch.float64)
    x[0, 0, 1, 1] = 1.0
    x[0, 0, second[0], second[1]] = 1.0
    torch.manual_seed(3)
    w = torch.rand(1, 1, 5, 5, dtype=torch.float64) + 0.1  # positive: overlap raises rho
    rho = sdr_from_weight(w, x, stride=stride, transposed=transposed)
    penalty = sdr_penalty_from_weight(w, x, stride=stride, transposed=transposed)
    if expect_one:
        assert abs(rho.item() - 1) < 1e-12
        assert penalty.item() < 1e-20
    else:
        assert rho.item() > 1.01
        assert penalty.item() > 1e-4


# ------------------------------------------------------------------------- undefined pairs


def test_undefined_pairs_are_nan_and_all_undefined_raises():
    layer = _layer(True, 3, 4, 5, 2)
    with torch.no_grad():
        layer.weight[1, 2] = 0.0  # kernel slice (o=2, i=1) dead
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    x[:, 0] = 0.0  # cause channel 0 dead (e.g. after a ReLU)
    got = sdr(layer, x)
    expected_nan = torch.zeros(4, 3, dtype=torch.bool)
    expected_nan[:, 0] = True
    expected_nan[2, 1] = True
    assert torch.equal(got.isnan(), expected_nan)
    want = reference_sdr(layer.weight, x, (2, 2), True)
    torch.testing.assert_close(got, want, rtol=1e-8, atol=0, equal_nan=True)
    stats = sdr_stats(got)
    assert stats["n"] == 12 - 5 and stats["undefined"] == 5

    with pytest.raises(ValueError, match="all .*zero"):
        sdr(layer, torch.zeros(2, 3, 6, 6))
    with pytest.raises(ValueError, match="all .*zero"):
        sdr_from_weight(torch.zeros(3, 4, 5, 5), x)


def test_constant_map_is_undefined_when_centered_and_wrapped_cancellation():
    x = torch.randn(3, 2, 6, 6, dtype=torch.float64)
    # Constant channel: zero energy once its mean is removed (a 1e-16 residue here).
    x[:, 1] = 0.7
    w = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    got = sdr_from_weight(w, x, transposed=False, center=True)
    assert got[0, 0].isfinite() and got[0, 1].isnan()
    assert sdr_from_weight(w, x, transposed=False).isfinite().all()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    # Taps 0 and 4 of a 5-tap kernel land on the same pixel of a 4x4 grid: these corner
    # taps cancel there (up to rounding, which must not yield a finite SDR).
    w2 = torch.zeros(1, 1, 5, 5, dtype=torch.float64)
    w2[0, 0, 0, 0], w2[0, 0, 4, 0], w2[0, 0, 0, 4] = 0.1, 0.2, -0.3
    w2 = torch.cat([w2, torch.randn(1, 1, 5, 5, dtype=torch.float64)], dim=0)
    got = sdr_from_weight(w2, x, transposed=False)
    assert got[0, 0].isnan() and got[1, 0].isfinite()
    kernel_power, _ = reference_spectra(w2, x, (1, 1), False)
    assert kernel_power[0, 0].max() < 1e-25  # the reference agrees: no energy on the grid


def test_bad_arguments_raise_clear_errors():
    x = torch.randn(2, 4, 6, 6)
    with pytest.raises(ValueError, match="groups"):
        sdr(nn.Conv2d(4, 4, 3, groups=2), x)
    with pytest.raises(ValueError, match="groups"):
        sdr_penalty(nn.ConvTranspose2d(4, 4, 3, groups=4), x)
    with pytest.raises(ValueError, match="dilation"):
        sdr(nn.Conv2d(4, 2, 3, dilation=2), x)
    with pytest.raises(ValueError, match="dilation"):
        sdr(nn.ConvTranspose2d(4, 2, 3, dilation=2), x)
    with pytest.raises(TypeError, match="layer"):
        sdr(nn.Linear(4, 4), x)
    with pytest.raises(ValueError, match="channels"):
        sdr(nn.Conv2d(3, 2, 3), x)
    with pytest.raises(ValueError, match="channels"):
        sdr(nn.ConvTranspose2d(3, 2, 3), x)
    with pytest.raises(ValueError, match="inputs"):
        sdr(nn.Conv2d(4, 2, 3), x[0])
    with pytest.raises(ValueError, match="stride"):
        sdr_from_weight(torch.randn(4, 2, 3, 3), x, stride=0)
    with pytest.raises(ValueError, match="weight"):
        sdr_from_weight(torch.randn(4, 2, 3), x)


# ------------------------------------------------------------------------------ penalty


@pytest.mark.parametrize("transposed,stride,hw", [(True, 2, (4, 4)), (False, 2, (6, 5))])
def test_penalty_equals_eq17_from_sdr(transposed, stride, hw):
    layer = _layer(transposed, 3, 4, 5, stride)
    with torch.no_grad():
        layer.weight[0, 1] = 0.0
    x = torch.relu(torch.randn(5, 3, *hw, dtype=torch.float64))
    x[:, 2] = 0.0  # a dead channel contributes 0
    rho = sdr(layer, x)
    kernel_power, periodogram = reference_spectra(layer.weight, x, (stride, stride), transposed)
    mean_k = kernel_power.mean(dim=(-2, -1))
    want = torch.nansum((mean_k * (rho - 1)).square())
    got = sdr_penalty(layer, x)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=0)
    # and directly as eq. 17 on the spectra: <|k^|^2 (P/<P> - 1)>^2 over the live pairs.
    p = periodogram[:2] / periodogram[:2].mean(dim=(-2, -1), keepdim=True)
    direct = (kernel_power[:, :2] * (p - 1)).mean(dim=(-2, -1)).square().sum()
    torch.testing.assert_close(got, direct, rtol=1e-9, atol=0)


@pytest.mark.parametrize("transposed,stride", [(True, 2), (False, 1)])
def test_penalty_gradient_matches_finite_differences(transposed, stride):
    torch.manual_seed(4)
    c_in, c_out = 2, 3
    shape = (c_in, c_out, 3, 3) if transposed else (c_out, c_in, 3, 3)
    w = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    x = torch.randn(3, c_in, 4, 4, dtype=torch.float64).cumsum(-1)
    x[:, 1] = 0.0  # dead channel: its pairs stay out of the gradient, which stays finite

    def f(weight):
        return sdr_penalty_from_weight(weight, x, stride=stride, transposed=transposed)

    assert torch.autograd.gradcheck(f, (w,), eps=1e-6, atol=1e-6, rtol=1e-6)
    (grad,) = torch.autograd.grad(f(w), w)
    assert grad.isfinite().all() and grad.abs().sum() > 0


def test_penalty_sends_no_gradient_into_the_inputs():
    torch.manual_seed(5)
    upstream = nn.ConvTranspose2d(2, 3, 3, stride=2, padding=1, output_padding=1)
    layer = nn.ConvTranspose2d(3, 4, 5, stride=2, padding=2, output_padding=1)
    z = torch.randn(4, 2, 3, 3, requires_grad=True)
    cause = torch.relu(upstream(z))
    penalty = sdr_penalty(layer, cause)
    assert penalty.dim() == 0 and penalty.dtype == torch.float32 and penalty.item() > 0
    penalty.backward()
    assert layer.weight.grad is not None and layer.weight.grad.abs().sum() > 0
    assert upstream.weight.grad is None and z.grad is None


def test_penalty_of_all_dead_layer_is_zero():
    layer = _layer(True, 2, 2, 3, 2)
    penalty = sdr_penalty(layer, torch.zeros(2, 2, 4, 4, dtype=torch.float64))
    assert penalty.item() == 0.0
    penalty.backward()
    assert layer.weight.grad.isfinite().all()


# -------------------------------------------------------------------------- trace ratio


def test_trace_ratio_vectors_equal_diagonal_matrices():
    torch.manual_seed(6)
    a, b = torch.randn(7, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    assert trace_ratio(a, b) == pytest.approx(trace_ratio(torch.diag(a), torch.diag(b)), rel=1e-12)
    # eq. 11 by hand: mean(a^2 b^2) / (mean a^2 mean b^2)
    want = float((a**2 * b**2).mean() / ((a**2).mean() * (b**2).mean()))
    assert trace_ratio(a, b) == pytest.approx(want, rel=1e-12)
    # complex diagonals use |.|^2, as do their diagonal matrices (conjugate transpose)
    ac, bc = torch.randn(7, dtype=torch.complex128), torch.randn(7, dtype=torch.complex128)
    assert trace_ratio(ac, bc) == pytest.approx(
        trace_ratio(torch.diag(ac), torch.diag(bc)), rel=1e-12
    )
    assert trace_ratio(ac, bc) == pytest.approx(trace_ratio(ac.abs(), bc.abs()), rel=1e-12)


def test_trace_ratio_constant_b_and_shared_eigenbasis():
    torch.manual_seed(7)
    a = torch.randn(6, dtype=torch.float64)
    assert trace_ratio(a, torch.full((6,), 2.5, dtype=torch.float64)) == pytest.approx(1.0)
    # Matrices sharing an eigenbasis: TR is that of their eigenvalues (Sec. 3.1).
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    b = torch.rand(6, dtype=torch.float64) + 0.5
    big_a, big_b = q @ torch.diag(a) @ q.T, q @ torch.diag(b) @ q.T
    assert trace_ratio(big_a, big_b) == pytest.approx(trace_ratio(a, b), rel=1e-10)
    assert trace_ratio(big_a, 3.0 * torch.eye(6, dtype=torch.float64)) == pytest.approx(1.0)
    # Positively correlated squared entries give TR > 1.
    assert trace_ratio(b, b) > 1.0
    with pytest.raises(ValueError, match="zero energy"):
        trace_ratio(a, torch.zeros(6))
    with pytest.raises(ValueError, match="square"):
        trace_ratio(torch.randn(3, 4), torch.randn(3, 4))
    with pytest.raises(ValueError, match="same shape"):
        trace_ratio(torch.randn(3), torch.randn(4))


def test_eq14_trace_ratio_of_dfts_is_the_sdr():
    """TR(k1^, k2^) = rho(k1, k2) (eq. 14): the trace ratio of the two kernels' DFTs, the SDR
    of eq. 9 on their power spectra, and the layer SDR with k1 as a one-sample cause."""
    torch.manual_seed(8)
    d = 12
    k1 = torch.zeros(d, d, dtype=torch.float64)
    k1[:4, :4] = torch.randn(4, 4, dtype=torch.float64)
    k2 = torch.randn(5, 5, dtype=torch.float64)
    f1, f2 = torch.fft.fft2(k1), torch.fft.fft2(k2, s=(d, d))
    tr = trace_ratio(f1.flatten(), f2.flatten())
    rho9 = spectral_density_ratio(f2.abs().square(), f1.abs().square()).item()
    rho16 = sdr_from_weight(k2[None, None], k1[None, None], transposed=False).item()
    assert tr == pytest.approx(rho9, rel=1e-10)
    assert tr == pytest.approx(rho16, rel=1e-10)


# ---------------------------------------------------------------------------- statistics


def test_sdr_stats_against_numpy():
    rng = np.random.default_rng(9)
    values = np.concatenate([rng.normal(1.0, 0.02, 300), rng.uniform(0.0, 3.0, 100)])
    values[[3, 50, 70]] = np.nan
    stats = sdr_stats(torch.from_numpy(values))
    assert stats["n"] == 397 and stats["undefined"] == 3
    assert stats["mean"] == pytest.approx(np.nanmean(values), rel=1e-12)
    assert stats["std"] == pytest.approx(np.nanstd(values), rel=1e-12)
    assert stats["median"] == pytest.approx(np.nanmedian(values), rel=1e-12)
    finite = values[np.isfinite(values)]
    width = (finite.max() - finite.min()) / 50
    assert abs(stats["mode"] - 1.0) < width  # the fullest bin holds the cluster at 1
    # explicit edges: the mode is the centre of the fullest bin
    edges = np.linspace(0.0, 3.0, 31)
    assert sdr_stats(values, bins=edges)["mode"] == pytest.approx(1.05)
    assert sdr_stats(values, bins=10, value_range=(0.1, 2.1))["mode"] == pytest.approx(1.0)
    # JSON-ready plain numbers
    text = json.dumps(stats)
    assert json.loads(text)["n"] == 397
    assert {type(v) for v in stats.values()} <= {int, float}


def test_sdr_stats_all_undefined():
    stats = sdr_stats(torch.full((3, 2), float("nan")))
    assert stats["n"] == 0 and stats["undefined"] == 6 and math.isnan(stats["mean"])

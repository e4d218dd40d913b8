"""Model 1 (circular two-layer convNet, eq. 4), Example 1 (eye generator), the scaling group
(Prop. 2), extrapolated classes (eq. 6), the entangled alternative solution (eq. 5) and the
spectral independence of Example 1 (eq. 9, Prop. 5)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch

from icm.spectral import spectral_density_ratio

__all__ = [
    "check_prime",
    "circular_conv",
    "circular_autocorrelation",
    "sample_latent",
    "sample_model1",
    "eye_kernel",
    "two_diracs",
    "example1",
    "is_invertible",
    "inverse_kernel",
    "random_invertible_kernel",
    "entangled_solution",
    "scaling_group",
    "group_inverse",
    "scale_kernel",
    "extrapolated_template",
    "extrapolated_class",
    "distribution_distance",
    "kernel_sdr",
    "prop5_condition",
    "prop5_printed_condition",
    "prop5_condition_kernels",
]


def check_prime(d: int) -> int:
    """Return ``d`` if it is a prime number (Model 1 needs it for the group of Prop. 2)."""
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"d must be a prime number, got {d!r}")
    if any(d % p == 0 for p in range(2, int(d**0.5) + 1)):
        raise ValueError(f"d must be a prime number, got {d}")
    return int(d)


def _check_image(k: np.ndarray, name: str, d: int | None = None) -> np.ndarray:
    k = np.asarray(k)
    if k.ndim < 2 or k.shape[-1] != k.shape[-2]:
        raise ValueError(f"{name} must hold square d x d images, got shape {k.shape}")
    if d is not None and k.shape[-1] != d:
        raise ValueError(f"{name} must be {d} x {d}, got shape {k.shape}")
    return k


def circular_conv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular convolution (a ⊗ b)[n] = sum_k a[k] b[n - k] modulo d on both axes (App. B.2),
    computed as a product of DFTs (App. B.3). Leading dimensions broadcast."""
    a = _check_image(a, "a")
    b = _check_image(b, "b", a.shape[-1])
    out = np.fft.ifft2(np.fft.fft2(a) * np.fft.fft2(b))
    return out.real if not (np.iscomplexobj(a) or np.iscomplexobj(b)) else out


def circular_autocorrelation(k: np.ndarray) -> np.ndarray:
    """Circular autocorrelation A(lag) = sum_x k[x] k[x + lag] (modulo d), i.e. k ⊗ k_σ with
    k_σ the mirrored kernel (App. A.6)."""
    k = _check_image(k, "k")
    return np.fft.ifft2(np.abs(np.fft.fft2(k)) ** 2).real


def sample_latent(n: int, d: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``n`` latent images of Model 1: one pixel set to one at a uniformly random location.

    Returns ``(Z, positions)`` with ``Z`` of shape ``(n, d, d)`` and ``positions`` ``(n, 2)``.
    """
    d = check_prime(d)
    if n < 1:
        raise ValueError(f"n must be a positive number of samples, got {n}")
    positions = rng.integers(0, d, size=(n, 2))
    z = np.zeros((n, d, d))
    z[np.arange(n), positions[:, 0], positions[:, 1]] = 1.0
    return z, positions


def sample_model1(
    k1: np.ndarray, k2: np.ndarray, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``n`` images X = k2 ⊗ k1 ⊗ Z of Model 1 (eq. 4). Returns ``(X, positions)``."""
    k1 = _check_image(k1, "k1")
    k2 = _check_image(k2, "k2", k1.shape[-1])
    z, positions = sample_latent(n, k1.shape[-1], rng)
    return circular_conv(k2, circular_conv(k1, z)), positions


def eye_kernel(d: int, delta: int) -> np.ndarray:
    """Example 1's k2: an eye (almond-shaped white of value 0.5 around a round iris of value 1)
    spanning all ``delta`` columns, so its minimal square has side ``delta``; placed at the
    top-left corner of a d x d image and scaled to unit energy (sum of squares one)."""
    d = check_prime(d)
    if not 1 <= delta < d:
        raise ValueError(f"delta must satisfy 1 <= delta < d = {d}, got {delta}")
    centre = (delta - 1) / 2
    idx = (np.arange(delta) - centre) / (delta / 2)
    y, x = np.meshgrid(idx, idx, indexing="ij")
    # Almond outline: it spans all delta columns (row `centre` is inside at both ends).
    eye = np.where(np.abs(y) < 0.6 * (1 - x**2), 0.5, 0.0)
    eye[x**2 + y**2 < 0.3**2] = 1.0
    if delta <= 2:  # too small for a shape: a filled square
        eye[:] = 1.0
    k = np.zeros((d, d))
    k[:delta, :delta] = eye
    return k / np.sqrt((k**2).sum())


def two_diracs(d: int, offset: Sequence[int]) -> np.ndarray:
    """Example 1's k1: unit Diracs at (0, 0) and at ``offset`` = (m, n) (modulo d)."""
    d = check_prime(d)
    m, n = (int(v) % d for v in offset)
    if (m, n) == (0, 0):
        raise ValueError(f"offset must differ from (0, 0) modulo d = {d}, got {tuple(offset)}")
    k = np.zeros((d, d))
    k[0, 0] = k[m, n] = 1.0
    return k


def example1(d: int, delta: int, offset: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """The eye generator of Example 1: ``(k1, k2)`` = (two Diracs, eye in a delta-square)."""
    return two_diracs(d, offset), eye_kernel(d, delta)


def is_invertible(k: np.ndarray, rtol: float = 1e-8) -> bool:
    """True if no DFT coefficient of ``k`` has modulus at most ``rtol`` times the largest one
    (a circular convolution is invertible iff its DFT has no zero, App. B.3)."""
    mod = np.abs(np.fft.fft2(_check_image(k, "k")))
    return bool(mod.max() > 0 and mod.min() > rtol * mod.max())


def inverse_kernel(k: np.ndarray, rtol: float = 1e-8) -> np.ndarray:
    """The kernel ω⁻¹ with ω⁻¹ ⊗ k = Dirac at (0, 0): the inverse DFT of 1 / k^."""
    if not is_invertible(k, rtol):
        raise ValueError(f"k is not invertible: a DFT coefficient is below {rtol} of the largest")
    inv = np.fft.ifft2(1.0 / np.fft.fft2(k))
    return inv if np.iscomplexobj(k) else inv.real


def random_invertible_kernel(
    d: int,
    rng: np.random.Generator,
    support: int = 3,
    rtol: float = 0.1,
    max_tries: int = 1000,
) -> np.ndarray:
    """A random Gaussian convolution kernel ω on a ``support`` x ``support`` square at the
    origin whose smallest DFT modulus is at least ``rtol`` times its largest (well-conditioned
    invertible element of Ω, Corollary 1); unit energy."""
    d = check_prime(d)
    if not 1 <= support <= d:
        raise ValueError(f"support must be between 1 and d = {d}, got {support}")
    for _ in range(max_tries):
        omega = np.zeros((d, d))
        omega[:support, :support] = rng.standard_normal((support, support))
        if is_invertible(omega, rtol):
            return omega / np.sqrt((omega**2).sum())
    raise ValueError(f"rtol={rtol}: no invertible kernel found in {max_tries} draws")


def entangled_solution(
    k1: np.ndarray, k2: np.ndarray, omega: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The alternative solution (ω⁻¹ ⊗ k1, k2 ⊗ ω) of the COS (eq. 5, Corollary 1): it
    generates the same images as (k1, k2) since ω ⊗ ω⁻¹ is the identity."""
    return circular_conv(inverse_kernel(omega), k1), circular_conv(k2, omega)


def scaling_group(d: int) -> list[int]:
    """The scaling group S of Prop. 2: multiplications by non-zero integers modulo prime d."""
    return list(range(1, check_prime(d)))


def group_inverse(g: int, d: int) -> int:
    """Inverse of ``g`` in S (multiplicative inverse modulo prime ``d``)."""
    d = check_prime(d)
    if int(g) % d == 0:
        raise ValueError(f"g must be non-zero modulo d = {d}, got {g}")
    return pow(int(g), -1, d)


def scale_kernel(k: np.ndarray, g: int) -> np.ndarray:
    """Group action of Prop. 2: (g·k)(m, n) = k(g m mod d, g n mod d).

    A Dirac at p moves to g⁻¹ p, so the eye offset (m, n) of Example 1 becomes g⁻¹ (m, n).
    """
    k = _check_image(k, "k")
    d = k.shape[-1]
    group_inverse(g, d)  # validates d prime and g invertible
    idx = (int(g) * np.arange(d)) % d
    return k[..., idx[:, None], idx[None, :]]


def extrapolated_template(k1: np.ndarray, k2: np.ndarray, g: int = 1) -> np.ndarray:
    """The image k2 ⊗ (g·k1): X of D_(g·k1, k2) is this template circularly translated to the
    uniformly random latent pixel (eq. 4), so it determines the distribution."""
    return circular_conv(k2, scale_kernel(k1, g))


def extrapolated_class(
    k1: np.ndarray, k2: np.ndarray, group: Iterable[int] | None = None
) -> dict[int, np.ndarray]:
    """The extrapolated class M^S of eq. (6) as templates {g: k2 ⊗ (g·k1)}, over ``group``
    (default: all of S)."""
    group = scaling_group(np.asarray(k1).shape[-1]) if group is None else group
    return {int(g): extrapolated_template(k1, k2, g) for g in group}


def distribution_distance(t1: np.ndarray, t2: np.ndarray) -> float:
    """Relative distance between the Model 1 distributions generated by templates ``t1`` and
    ``t2``: min over circular translations s of ||t1 - roll(t2, s)|| / ||t1||. Zero iff the
    two distributions (uniform over translates, eq. 4) are the same."""
    t1 = _check_image(t1, "t1")
    t2 = _check_image(t2, "t2", t1.shape[-1])
    # ||t1 - roll(t2, s)||² = ||t1||² + ||t2||² - 2 <t1, roll(t2, s)>: the best s maximizes
    # the circular cross-correlation (by DFT); the norm is then taken directly (no cancellation).
    xcorr = np.fft.ifft2(np.fft.fft2(t1) * np.conj(np.fft.fft2(t2))).real
    best = np.unravel_index(np.argmax(xcorr), xcorr.shape)
    diff = t1 - np.roll(t2, best, axis=(-2, -1))
    return float(np.linalg.norm(diff) / np.linalg.norm(t1))


def kernel_sdr(k1: np.ndarray, k2: np.ndarray) -> float:
    """SDR ρ(k1, k2) of eq. (9): <|k2^ k1^|²> / (<|k1^|²> <|k2^|²>) on the d x d DFT grid."""
    k1 = _check_image(k1, "k1")
    k2 = _check_image(k2, "k2", k1.shape[-1])
    power1 = torch.from_numpy(np.abs(np.fft.fft2(k1)) ** 2)
    power2 = torch.from_numpy(np.abs(np.fft.fft2(k2)) ** 2)
    return float(spectral_density_ratio(power2, power1))


def _circular_distance(v: int, d: int) -> int:
    v = int(v) % d
    return min(v, d - v)


def prop5_condition(delta: int, m: int, n: int, d: int) -> bool:
    """Condition under which the proof of Prop. 5 (App. A.6) gives ρ(k1, k2) = 1 for Example 1.

    With k2 supported in a delta x delta square and k1 Diracs at (0, 0) and (m, n),
    ρ = 1 + A(m, n) / A(0, 0), A the circular autocorrelation of k2. A is supported on lags
    in [-(delta-1), delta-1]² periodized with period d, so ρ = 1 whenever (m, n) modulo d
    lies outside that set: the two eye copies do not overlap circularly, i.e.
    max(min(m, d-m), min(n, d-n)) >= delta (m, n reduced modulo d).

    The inequality printed in Prop. 5, 2δ < max(m, n, d-m, d-n), is not this condition: its
    right side is at least d/2, so it holds for every offset once 2δ < d/2, including
    overlapping ones such as (m, n) = (0, 1) for which ρ != 1 (see
    :func:`prop5_printed_condition`).
    """
    d = check_prime(d)
    if not 1 <= delta < d:
        raise ValueError(f"delta must satisfy 1 <= delta < d = {d}, got {delta}")
    return max(_circular_distance(m, d), _circular_distance(n, d)) >= delta


def prop5_printed_condition(delta: int, m: int, n: int, d: int) -> bool:
    """The inequality as printed in Prop. 5: 2δ < max(m, n, d - m, d - n) (m, n reduced
    modulo d). Kept to show it does not imply ρ = 1; use :func:`prop5_condition`."""
    m, n = int(m) % d, int(n) % d
    return 2 * delta < max(m, n, d - m, d - n)


def prop5_condition_kernels(k1: np.ndarray, k2: np.ndarray) -> bool:
    """Condition of App. A.6 on the actual kernels: copies of k2's support placed at the
    non-zero pixels of k1 do not overlap circularly, i.e. the autocorrelation of k2's support
    vanishes at every difference of two distinct non-zero positions of k1. Then every cross
    term of ρ vanishes and ρ(k1, k2) = 1 (eq. 9)."""
    k1 = _check_image(k1, "k1")
    k2 = _check_image(k2, "k2", k1.shape[-1])
    d = k1.shape[-1]
    overlap = circular_autocorrelation((k2 != 0).astype(float))
    points = np.argwhere(k1 != 0)
    lags = (points[:, None, :] - points[None, :, :]) % d
    distinct = ~np.eye(len(points), dtype=bool)
    return bool(np.all(overlap[lags[..., 0], lags[..., 1]][distinct] < 0.5))

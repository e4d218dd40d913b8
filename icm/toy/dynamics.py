"""Gradient dynamics on the over-parameterized product c = a b (Sec. 3.2, eq. 12-13): continuous
time gradient descent (Prop. 7, eq. 21-22), SGD (Alg. 1, Prop. 8), asynchronous SGD (Alg. 2,
App. C.1), and SGD on the Fourier coefficients of Example 1's kernels (Sec. 3.4, Fig. 3b).

The updates accept real or complex parameters of any shape: for complex ones, gradients are
taken with respect to real and imaginary parts, which turns eq. (19)-(20) into
grad_a = -2 conj(b) (c - a b), grad_b = -2 conj(a) (c - a b), entrywise."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import numpy as np
from scipy.integrate import solve_ivp

__all__ = [
    "invariant",
    "loss_gradient",
    "ctgd",
    "ctgd_limit",
    "sample_targets",
    "sgd",
    "asgd",
    "sgd_expected_invariant_change",
    "asgd_expected_invariant_change",
    "fourier_sgd",
]


def invariant(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """L(a, b) = |a|² - |b|², conserved by CTGD (Prop. 7)."""
    return np.abs(a) ** 2 - np.abs(b) ** 2


def loss_gradient(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradient of |c - a b|² (eq. 12) with respect to a and b (eq. 19-20)."""
    r = c - a * b
    return -2 * np.conj(b) * r, -2 * np.conj(a) * r


def ctgd(
    a0: float,
    b0: float,
    c: float,
    t_end: float,
    *,
    n_points: int = 200,
    rtol: float = 1e-11,
    atol: float = 1e-13,
) -> tuple[np.ndarray, np.ndarray]:
    """Continuous-time gradient descent on eq. (12): integrate da/dt = 2b(c - ab),
    db/dt = 2a(c - ab) (eq. 21-22) from (a0, b0) to time ``t_end`` with an 8th-order
    Runge-Kutta method (scipy's DOP853). Returns ``(t, path)``, ``path`` of shape
    ``(n_points, 2)`` holding (a, b)."""
    if not (a0 > 0 and b0 > 0):
        raise ValueError(f"(a0, b0) must be positive (Prop. 7), got ({a0}, {b0})")
    if not t_end > 0:
        raise ValueError(f"t_end must be positive, got {t_end}")

    def field(_t: float, y: np.ndarray) -> np.ndarray:
        return -np.array(loss_gradient(y[0], y[1], c))

    t_eval = np.linspace(0.0, t_end, n_points)
    sol = solve_ivp(
        field, (0.0, t_end), [a0, b0], method="DOP853", t_eval=t_eval, rtol=rtol, atol=atol
    )
    if not sol.success:
        raise RuntimeError(f"CTGD integration failed: {sol.message}")
    return sol.t, sol.y.T


def ctgd_limit(a0: float, b0: float, c: float) -> tuple[float, float]:
    """Where CTGD from (a0, b0) > 0 converges (Prop. 7): the point of the hyperbola a b = c with
    a² - b² = a0² - b0², i.e. a² = (L + sqrt(L² + 4c²)) / 2."""
    if not c > 0:
        raise ValueError(f"c must be positive, got {c}")
    level = a0**2 - b0**2
    a = np.sqrt((level + np.sqrt(level**2 + 4 * c**2)) / 2)
    return float(a), float(c / a)


def sample_targets(
    c0: complex | np.ndarray, sigma: float, steps: int, rng: np.random.Generator
) -> np.ndarray:
    """Draw ``steps`` targets C ~ N(c0, sigma²) of the stochastic objective (eq. 13); shape
    ``(steps, *shape(c0))``."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    c0 = np.asarray(c0, float)
    return c0 + sigma * rng.standard_normal((steps, *c0.shape))


def _descend(
    a0: np.ndarray | float,
    b0: np.ndarray | float,
    targets: Iterable[np.ndarray],
    lr: float,
    order: Literal["sync", "a", "b"],
    record_every: int,
) -> tuple[np.ndarray, np.ndarray]:
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr}")
    if record_every < 1:
        raise ValueError(f"record_every must be positive, got {record_every}")
    a, b = np.array(a0), np.array(b0)
    a_path, b_path = [a.copy()], [b.copy()]
    step = 0
    for step, c in enumerate(targets, start=1):
        if order == "sync":  # Alg. 1: both gradients at (a_n, b_n)
            ga, gb = loss_gradient(a, b, c)
            a, b = a - lr * ga, b - lr * gb
        elif order == "a":  # Alg. 2: b's gradient at (a_{n+1}, b_n)
            a = a - lr * loss_gradient(a, b, c)[0]
            b = b - lr * loss_gradient(a, b, c)[1]
        else:  # Alg. 2 with the roles of a and b swapped
            b = b - lr * loss_gradient(a, b, c)[1]
            a = a - lr * loss_gradient(a, b, c)[0]
        if step % record_every == 0:
            a_path.append(a.copy())
            b_path.append(b.copy())
    if step == 0:
        raise ValueError("targets must hold at least one sample")
    if step % record_every:
        a_path.append(a.copy())
        b_path.append(b.copy())
    return np.stack(a_path), np.stack(b_path)


def sgd(
    a0: np.ndarray | float,
    b0: np.ndarray | float,
    targets: Iterable[np.ndarray],
    lr: float,
    *,
    record_every: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """SGD of Alg. 1 on ℓ = |C - a b|² (eq. 13), one step per target sample.

    Returns the paths of a and b, recorded at the start, every ``record_every`` steps and at
    the end. Each step multiplies L = |a|² - |b|² by 1 - 4 lr² |c_n - a_n b_n|² (App. A.5),
    which drives L towards 0, i.e. towards |a| = |b| (Prop. 8)."""
    return _descend(a0, b0, targets, lr, "sync", record_every)


def asgd(
    a0: np.ndarray | float,
    b0: np.ndarray | float,
    targets: Iterable[np.ndarray],
    lr: float,
    *,
    first: Literal["a", "b"] = "a",
    record_every: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Asynchronous SGD (Alg. 2, App. C.1): update ``first`` (``"a"`` as printed in Alg. 2),
    then the other parameter with its gradient at the updated value.

    With ``first="a"`` the expected one-step change of L = a² - b² near the solution set is
    -4 lr² sigma² (a² + b²) + O(lr³) < 0 (:func:`asgd_expected_invariant_change`): L keeps
    decreasing, so the path drifts along a b = c towards the *b* axis (large b, small a),
    until 2 lr b² reaches 1, where the a-update becomes an exact minimisation and b stops
    growing: b -> 1/sqrt(2 lr). ``first="b"`` mirrors this towards the a axis."""
    if first not in ("a", "b"):
        raise ValueError(f"first must be 'a' or 'b', got {first!r}")
    return _descend(a0, b0, targets, lr, first, record_every)


def _normal_moments(mu: float, sigma: float) -> tuple[float, float, float, float]:
    """E r, E r², E r³, E r⁴ for r ~ N(mu, sigma²)."""
    s2 = sigma**2
    return mu, mu**2 + s2, mu**3 + 3 * mu * s2, mu**4 + 6 * mu**2 * s2 + 3 * s2**2


def sgd_expected_invariant_change(a: float, b: float, c0: float, sigma: float, lr: float) -> float:
    """E[L(a_1, b_1)] - L(a, b) for one SGD step (Alg. 1) from (a, b) with C ~ N(c0, sigma²):
    -4 lr² (a² - b²) E[(C - a b)²] (App. A.5; Prop. 8's eta is 1 - 4 lr² E[(C - ab)²])."""
    return -4 * lr**2 * (a**2 - b**2) * _normal_moments(c0 - a * b, sigma)[1]


def asgd_expected_invariant_change(
    a: float, b: float, c0: float, sigma: float, lr: float
) -> float:
    """E[L(a_1, b_1)] - L(a, b) for one ASGD step (Alg. 2, a first) from (a, b) with
    C ~ N(c0, sigma²), exact.

    With r = C - a b and s = 2 lr b²: a_1 = a + 2 lr b r, the residual after the a-update is
    r (1 - s), b_1 = b + 2 lr a_1 r (1 - s), and expanding L(a_1, b_1) - L(a, b) gives the
    quartic 4 lr s a b r + 4 lr² r² (b² - (1-s)² a²) - 4 lr s (1 - s) r²
    - 16 lr³ (1-s)² a b r³ - 16 lr⁴ (1-s)² b² r⁴, averaged with the Gaussian moments of r.
    On the solution set (a b = c0) this is 4 lr² sigma² [-(1 - 2s) b² - (1-s)² a²
    - 12 lr² sigma² (1-s)² b²] ≈ -4 lr² sigma² (a² + b²) for small lr."""
    s = 2 * lr * b**2
    m1, m2, m3, m4 = _normal_moments(c0 - a * b, sigma)
    return (
        4 * lr * s * a * b * m1
        + (4 * lr**2 * (b**2 - (1 - s) ** 2 * a**2) - 4 * lr * s * (1 - s)) * m2
        - 16 * lr**3 * (1 - s) ** 2 * a * b * m3
        - 16 * lr**4 * (1 - s) ** 2 * b**2 * m4
    )


def fourier_sgd(
    k1: np.ndarray,
    k2: np.ndarray,
    noise_std: float,
    lr: float,
    steps: int,
    rng: np.random.Generator,
    *,
    record_every: int = 1,
    init: Sequence[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """SGD on the real and imaginary parts of the DFT coefficients of (k1, k2) for Model 1 with
    the latent fixed to a Dirac at (0, 0) (Sec. 3.4, Fig. 3b).

    Each step draws an image X = k2* ⊗ k1* + noise (white Gaussian, ``noise_std`` per pixel)
    from the true kernels ``(k1, k2)``; by Parseval the squared error decouples over
    frequencies u into |X^(u) - k2^(u) k1^(u)|², and each coefficient pair follows Alg. 1.
    Starts from ``init`` (spatial kernels, default the true ones). Returns
    ``(k1_hat_path, k2_hat_path, target_hat)``: recorded coefficient arrays of shape
    ``(R, d, d)`` and the noiseless target k2*^ k1*^. Real noise keeps both paths Hermitian,
    so the kernels stay real."""
    if steps < 1:
        raise ValueError(f"steps must be positive, got {steps}")
    d = np.asarray(k1).shape[-1]
    target = np.fft.fft2(k2) * np.fft.fft2(k1)
    start = (k1, k2) if init is None else init

    def targets() -> Iterable[np.ndarray]:
        for _ in range(steps):
            yield target + np.fft.fft2(noise_std * rng.standard_normal((d, d)))

    p, q = sgd(
        np.fft.fft2(start[0]), np.fft.fft2(start[1]), targets(), lr, record_every=record_every
    )
    return p, q, target

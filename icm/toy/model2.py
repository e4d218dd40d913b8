"""Model 2 (diagonal linear generator X = A B Z, eq. 10): the trace ratio of its solutions
(eq. 11) and Prop. 9 (the square-root solution A = B = sqrt(A* B*) is not generic)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.stats
import torch

from icm.spectral import trace_ratio

__all__ = ["make_distribution", "diagonal_trace_ratio", "prop9_expected", "prop9"]


def make_distribution(spec: Mapping[str, Any]) -> Any:
    """A frozen ``scipy.stats`` distribution from ``{"name": ..., **parameters}``, e.g.
    ``{"name": "uniform", "loc": 0.5, "scale": 1.0}``. Diagonal entries of Model 2 are
    positive, so the support must lie in [0, inf) and the distribution must not be constant."""
    spec = dict(spec)
    name = spec.pop("name", None)
    family = getattr(scipy.stats, str(name), None)
    if not isinstance(family, scipy.stats.rv_continuous):
        raise ValueError(f"spec name must name a continuous scipy.stats distribution, got {name!r}")
    dist = family(**spec)
    if dist.support()[0] < 0:
        raise ValueError(f"spec {name!r} must have support in [0, inf), got {dist.support()}")
    if not dist.var() > 0:
        raise ValueError(f"spec {name!r} must not be constant")
    return dist


def diagonal_trace_ratio(a: np.ndarray, b: np.ndarray) -> float:
    """TR(B, A) of eq. (11) for diagonal matrices given by their diagonals."""
    return trace_ratio(torch.as_tensor(np.asarray(a)), torch.as_tensor(np.asarray(b)))


def prop9_expected(a_dist: Any, b_dist: Any) -> float:
    """Limit of Prop. 9, E[c²] / E[c]² with c = a* b* for independent a* ~ a_dist,
    b* ~ b_dist: E[a*²] E[b*²] / (E[a*] E[b*])², from the distributions' moments."""
    return float(
        a_dist.moment(2) * b_dist.moment(2) / (a_dist.moment(1) * b_dist.moment(1)) ** 2
    )


def prop9(
    d: int, a_dist: Any, b_dist: Any, rng: np.random.Generator
) -> dict[str, float]:
    """Draw the true diagonals a*, b* (d i.i.d. entries each) and return

    - ``tr_independent``: TR(B*, A*), which tends to E[a²b²]/(E[a²]E[b²]) = 1 (Sec. 3.1);
    - ``tr_sqrt``: TR(B, A) of the solution A = B = sqrt(A* B*), which tends to
      E[c²]/E[c]² > 1 (Prop. 9);
    - ``expected``: that limit, :func:`prop9_expected`.
    """
    if d < 1:
        raise ValueError(f"d must be a positive dimension, got {d}")
    a_true = a_dist.rvs(size=d, random_state=rng)
    b_true = b_dist.rvs(size=d, random_state=rng)
    root = np.sqrt(a_true * b_true)
    return {
        "tr_independent": diagonal_trace_ratio(a_true, b_true),
        "tr_sqrt": diagonal_trace_ratio(root, root),
        "expected": prop9_expected(a_dist, b_dist),
    }

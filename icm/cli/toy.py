"""`icm-toy`: run the paper's toy-model theory (Example 1, Props. 5, 7-9, eq. 14, Fig. 2b, 3a,
3b) from conf/toy.yaml and write figures/ and results.json into the Hydra run directory."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import hydra
import numpy as np
from omegaconf import DictConfig, OmegaConf

from icm.cli import CONF_DIR
from icm.cli.common import run_cli
from icm.report.toy_figures import (
    extrapolation_figure,
    fourier_paths_figure,
    save_figure,
    trajectory_figure,
)
from icm.toy import dynamics, model1, model2

log = logging.getLogger(__name__)


def _offset_under(g: int, offset: list[int], d: int) -> list[int]:
    """Offset of k1's second Dirac after the action of g: g⁻¹ (m, n) mod d (Prop. 2)."""
    inv = model1.group_inverse(g, d)
    return [(inv * v) % d for v in offset]


def _example1(
    k1: np.ndarray, k2: np.ndarray, cfg: DictConfig, ent: DictConfig, figures: Path
) -> dict[str, Any]:
    """Example 1, its entangled alternative solution and their extrapolations (Fig. 2b)."""
    d, delta, offset = cfg.d, cfg.delta, list(cfg.offset)
    rng = np.random.default_rng(ent.seed)
    omega = model1.random_invertible_kernel(d, rng, ent.omega_support, ent.omega_rtol)
    k1_ent, k2_ent = model1.entangled_solution(k1, k2, omega)
    group = [1, *(int(g) for g in ent.group_elements)]
    offsets = {g: _offset_under(g, offset, d) for g in group}
    templates = {
        "true": model1.extrapolated_class(k1, k2, group),
        "entangled": model1.extrapolated_class(k1_ent, k2_ent, group),
    }
    # Same latent draws for both solutions: the images must coincide (same distribution).
    x_true, _ = model1.sample_model1(k1, k2, 64, np.random.default_rng(ent.seed + 1))
    x_ent, _ = model1.sample_model1(k1_ent, k2_ent, 64, np.random.default_rng(ent.seed + 1))
    extrapolation_error = {
        g: model1.distribution_distance(templates["true"][g], templates["entangled"][g])
        for g in group[1:]
    }
    shift = ((d - delta) // 2, (d - delta - offset[1]) // 2)
    fig = extrapolation_figure(
        {"true": (k1, k2), "entangled": (k1_ent, k2_ent)}, templates, offsets, shift
    )
    save_figure(fig, figures / "fig2b_extrapolations.png")
    omega_mod = np.abs(np.fft.fft2(omega))
    return {
        "example1_k2_min_abs_dft": float(np.abs(np.fft.fft2(k2)).min()),
        "entangled_omega_dft_ratio": float(omega_mod.min() / omega_mod.max()),
        "entangled_fit_error": model1.distribution_distance(
            templates["true"][1], templates["entangled"][1]
        ),
        "entangled_sample_max_abs_diff": float(np.abs(x_true - x_ent).max()),
        "entangled_group_elements": group[1:],
        "entangled_offsets": {str(g): offsets[g] for g in group[1:]},
        "entangled_extrapolation_error": {str(g): e for g, e in extrapolation_error.items()},
    }


def _prop5(k1: np.ndarray, k2: np.ndarray, cfg: DictConfig, prop5: DictConfig) -> dict[str, Any]:
    """Prop. 5: SDR of Example 1 (eq. 9) under the scaling group and with overlapping eyes."""
    d, delta, offset = cfg.d, cfg.delta, list(cfg.offset)
    group = model1.scaling_group(d) if prop5.group_elements is None else list(prop5.group_elements)
    kept, kept_rho, other, other_rho = [], [], [], []
    for g in group:
        rho = model1.kernel_sdr(model1.scale_kernel(k1, g), k2)
        if model1.prop5_condition(delta, *_offset_under(g, offset, d), d):
            kept.append(int(g))
            kept_rho.append(rho)
        else:
            other.append(int(g))
            other_rho.append(rho)
    overlap = list(prop5.overlap_offset)
    k1_overlap = model1.two_diracs(d, overlap)
    return {
        "prop5_rho": model1.kernel_sdr(k1, k2),
        "prop5_condition": model1.prop5_condition(delta, *offset, d),
        "prop5_group_elements": kept,
        "prop5_rho_scaled": kept_rho,
        "prop5_group_elements_other": other,
        "prop5_rho_other": other_rho,
        "prop5_overlap_offset": overlap,
        "prop5_rho_overlapping": model1.kernel_sdr(k1_overlap, k2),
        "prop5_condition_overlapping": model1.prop5_condition(delta, *overlap, d),
        "prop5_printed_condition_overlapping": model1.prop5_printed_condition(
            delta, *overlap, d
        ),
    }


def _prop9(cfg: DictConfig) -> dict[str, Any]:
    """Prop. 9: TR (eq. 11) of independent draws versus the square-root solution."""
    a_dist = model2.make_distribution(OmegaConf.to_container(cfg.a_dist))
    b_dist = model2.make_distribution(OmegaConf.to_container(cfg.b_dist))
    rng = np.random.default_rng(cfg.seed)
    series = {int(d): model2.prop9(int(d), a_dist, b_dist, rng) for d in cfg.d_series}
    final = model2.prop9(int(cfg.d), a_dist, b_dist, rng)
    return {
        "prop9_d": int(cfg.d),
        "prop9_tr_independent": final["tr_independent"],
        "prop9_tr_sqrt": final["tr_sqrt"],
        "prop9_expected": final["expected"],
        "prop9_tr_independent_series": {str(d): r["tr_independent"] for d, r in series.items()},
        "prop9_tr_sqrt_series": {str(d): r["tr_sqrt"] for d, r in series.items()},
    }


def _axis(a: float, b: float) -> str:
    """The axis a path ends nearer to: the b axis when a is the smaller coordinate."""
    return "b" if abs(a) < abs(b) else "a"


def _dynamics(cfg: DictConfig, figures: Path) -> dict[str, Any]:
    """Sec. 3.2: CTGD (Prop. 7), SGD (Alg. 1, Prop. 8) and ASGD (Alg. 2) on eq. (12)-(13)."""
    c = float(cfg.c)
    ctgd_paths, l_change, limit_error = [], 0.0, 0.0
    for a0, b0 in cfg.ctgd_inits:
        _, path = dynamics.ctgd(float(a0), float(b0), c, float(cfg.ctgd_t_end))
        level = dynamics.invariant(path[:, 0], path[:, 1])
        l_change = max(l_change, float(np.abs(level - level[0]).max()))
        limit = dynamics.ctgd_limit(float(a0), float(b0), c)
        limit_error = max(limit_error, float(np.hypot(*(path[-1] - limit))))
        ctgd_paths.append(path)
    a0, b0 = (float(v) for v in cfg.init)
    targets = dynamics.sample_targets(c, float(cfg.sigma), int(cfg.steps),
                                      np.random.default_rng(cfg.seed))
    runs = {
        "sgd": dynamics.sgd(a0, b0, targets, cfg.lr),
        "asgd": dynamics.asgd(a0, b0, targets, cfg.lr, first="a"),
        "asgd_b_first": dynamics.asgd(a0, b0, targets, cfg.lr, first="b"),
    }
    paths = {name: np.stack(ab, axis=1) for name, ab in runs.items()}
    fig = trajectory_figure(c, ctgd_paths, paths["sgd"], paths["asgd"])
    save_figure(fig, figures / "fig3a_trajectories.png")
    out: dict[str, Any] = {
        "ctgd_L_change": l_change,
        "ctgd_limit_error": limit_error,
        "sgd_initial_L": float(dynamics.invariant(a0, b0)),
    }
    for name, path in paths.items():
        a, b = (float(v) for v in path[-1])
        out[f"{name}_final_L"] = float(dynamics.invariant(a, b))
        out[f"{name}_final_ab"] = [a, b]
        if name != "sgd":
            out[f"{name}_axis"] = _axis(a, b)
    out["asgd_b_limit"] = float(1 / np.sqrt(2 * cfg.lr))
    out["asgd_expected_L_change_at_init"] = dynamics.asgd_expected_invariant_change(
        a0, b0, c, float(cfg.sigma), float(cfg.lr)
    )
    out["sgd_expected_L_change_at_init"] = dynamics.sgd_expected_invariant_change(
        a0, b0, c, float(cfg.sigma), float(cfg.lr)
    )
    return out


def _tr(a: np.ndarray, b: np.ndarray) -> float:
    """TR (eq. 11) of two DFT arrays read as diagonals."""
    return model2.diagonal_trace_ratio(a.ravel(), b.ravel())


def _fourier(k1: np.ndarray, k2: np.ndarray, cfg: DictConfig, figures: Path) -> dict[str, Any]:
    """Sec. 3.4: SGD on Example 1's DFT coefficients (Fig. 3b) and eq. (14)."""
    d = k1.shape[-1]
    rng = np.random.default_rng(cfg.seed)
    p, q, target = dynamics.fourier_sgd(
        k1, k2, cfg.noise_std, cfg.lr, cfg.steps, rng, record_every=cfg.record_every
    )
    steps = np.minimum(np.arange(len(p)) * cfg.record_every, cfg.steps)
    gap = np.abs(np.abs(p) ** 2 - np.abs(q) ** 2)
    order = np.argsort(gap[0], axis=None)[::-1]
    tracked, seen = [], set()
    for flat in order:  # one of each conjugate pair (their paths mirror each other)
        u, v = (int(i) for i in np.unravel_index(flat, gap[0].shape))
        if (u, v) not in seen and len(tracked) < cfg.n_tracked:
            tracked.append((u, v))
            seen.update({(u, v), ((-u) % d, (-v) % d)})
    save_figure(fourier_paths_figure(p, q, steps, tracked), figures / "fig3b_fourier_paths.png")
    root = np.sqrt(np.abs(target))
    k1_hat, k2_hat = np.fft.fft2(k1), np.fft.fft2(k2)
    return {
        "fig3b_tracked": [list(t) for t in tracked],
        "fig3b_power_gap_initial": float(gap[0].max()),
        "fig3b_power_gap_final": float(gap[-1].max()),
        "fig3b_fit_error_final": float(
            np.linalg.norm(p[-1] * q[-1] - target) / np.linalg.norm(target)
        ),
        "fig3b_kernel_max_imag": float(
            max(np.abs(np.fft.ifft2(p[-1]).imag).max(), np.abs(np.fft.ifft2(q[-1]).imag).max())
        ),
        "fig3b_tr_initial": _tr(p[0], q[0]),
        "fig3b_tr_final": _tr(p[-1], q[-1]),
        "fig3b_tr_sqrt": _tr(root, root),
        "eq14_tr": _tr(k1_hat, k2_hat),
        "eq14_rho": model1.kernel_sdr(k1, k2),
    }


def run_toy(cfg: DictConfig, output_dir: str | Path | None = None) -> dict[str, Any]:
    """Run every toy experiment of ``cfg`` (conf/toy.yaml) and write ``figures/*.png`` and
    ``results.json`` into ``output_dir`` (default: the Hydra run directory). Returns the
    results."""
    if output_dir is None:
        from hydra.core.hydra_config import HydraConfig

        output_dir = HydraConfig.get().runtime.output_dir
    out = Path(output_dir)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    ex = cfg.example1
    k1, k2 = model1.example1(ex.d, ex.delta, list(ex.offset))
    results: dict[str, Any] = {}
    results.update(_example1(k1, k2, ex, cfg.entangled, figures))
    results.update(_prop5(k1, k2, ex, cfg.prop5))
    results.update(_prop9(cfg.prop9))
    results.update(_dynamics(cfg.dynamics, figures))
    results.update(_fourier(k1, k2, cfg.fourier, figures))
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    for key in ("prop5_rho", "prop5_rho_overlapping", "prop9_tr_independent", "prop9_tr_sqrt",
                "prop9_expected", "ctgd_L_change", "sgd_final_L", "asgd_final_L", "asgd_axis",
                "eq14_tr", "eq14_rho"):
        log.info("%s = %s", key, results[key])
    log.info("results and figures written to %s", out)
    return results


# An absolute config path: a relative one resolves as a Python package for the console script.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="toy")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        run_toy(cfg)
    except ValueError as exc:  # bad parameters: one line, no traceback
        print(f"icm-toy: error: {exc}", file=sys.stderr)
        sys.exit(2)


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``icm-toy``: an unknown key or a malformed value stops with one
    line before any run directory exists."""
    run_cli("icm-toy", _hydra_main, "toy", argv=argv)


if __name__ == "__main__":
    main()

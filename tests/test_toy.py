"""Tests of the toy-model theory (icm/toy, icm-toy): each against an independent reference."""

from __future__ import annotations

import itertools
import json
import sys

import numpy as np
import pytest
import scipy.stats
import torch
from hydra import compose, initialize_config_dir

from icm.cli import CONF_DIR
from icm.cli.toy import run_toy
from icm.toy import dynamics, model1, model2

# ----------------------------------------------------------------------------- references


def direct_conv(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Circular convolution by its definition (App. B.2), with explicit sums."""
    d = a.shape[0]
    out = np.zeros((d, d))
    for (i, j), (k, m) in itertools.product(np.ndindex(d, d), np.ndindex(d, d)):
        out[i, j] += a[k, m] * b[(i - k) % d, (j - m) % d]
    return out


def rho_by_overlap(k1: np.ndarray, k2: np.ndarray) -> float:
    """SDR (eq. 9) in the pixel domain (Parseval): sum (k2 ⊗ k1)² / (sum k1² sum k2²)."""
    x = direct_conv(k2, k1)
    return float((x**2).sum() / ((k1**2).sum() * (k2**2).sum()))


def overlap_theory(k2: np.ndarray, m: int, n: int) -> float:
    """App. A.6: for Diracs at (0, 0) and (m, n), rho = 1 + <k2, roll(k2, (m, n))> / <k2, k2>."""
    return float(1 + (k2 * np.roll(k2, (m, n), axis=(0, 1))).sum() / (k2**2).sum())


# ---------------------------------------------------------------------------- Model 1


@pytest.mark.parametrize("bad", [1, 4, 35, 2.5, True, -7])
def test_check_prime_rejects(bad):
    with pytest.raises(ValueError, match="d must be a prime"):
        model1.check_prime(bad)


def test_check_prime_accepts():
    assert [model1.check_prime(p) for p in (2, 3, 13, 37)] == [2, 3, 13, 37]


def test_circular_conv_matches_definition():
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((2, 7, 7))
    np.testing.assert_allclose(model1.circular_conv(a, b), direct_conv(a, b), atol=1e-12)


def test_model1_sampler_is_translated_k2_k1():
    rng = np.random.default_rng(1)
    d = 11
    k1, k2 = model1.example1(d, 3, (2, 5))
    x, pos = model1.sample_model1(k1, k2, 20, rng)
    template = direct_conv(k2, k1)
    for xi, p in zip(x, pos, strict=True):
        np.testing.assert_allclose(xi, np.roll(template, tuple(p), axis=(0, 1)), atol=1e-12)
    z, _ = model1.sample_latent(500, d, rng)
    assert np.all(z.sum(axis=(1, 2)) == 1) and set(np.unique(z)) == {0.0, 1.0}


def test_example1_kernels():
    k1, k2 = model1.example1(37, 7, (0, 9))
    assert np.argwhere(k1).tolist() == [[0, 0], [0, 9]]
    rows, cols = np.nonzero(k2)
    assert cols.min() == 0 and cols.max() == 6 and rows.max() - rows.min() < 7
    assert (k2**2).sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="delta"):
        model1.eye_kernel(37, 37)
    with pytest.raises(ValueError, match="offset"):
        model1.two_diracs(37, (37, 0))


def test_scaling_group_is_a_group_and_acts():
    d = 7
    k = np.random.default_rng(2).standard_normal((d, d))
    group = model1.scaling_group(d)
    assert group == [1, 2, 3, 4, 5, 6]
    np.testing.assert_array_equal(model1.scale_kernel(k, 1), k)  # identity acts trivially
    for g, h in itertools.product(group, group):
        assert (g * h) % d in group  # closure
        np.testing.assert_array_equal(  # g·(h·k) = (gh)·k
            model1.scale_kernel(model1.scale_kernel(k, h), g), model1.scale_kernel(k, g * h % d)
        )
    for g in group:
        inv = model1.group_inverse(g, d)
        assert (g * inv) % d == 1
        np.testing.assert_array_equal(model1.scale_kernel(model1.scale_kernel(k, g), inv), k)
    with pytest.raises(ValueError, match="g must be non-zero"):
        model1.scale_kernel(k, 14)


def test_action_moves_diracs_and_respects_convolution():
    d = 11
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((2, d, d))
    k1 = model1.two_diracs(d, (1, 3))
    for g in model1.scaling_group(d):
        inv = model1.group_inverse(g, d)
        expected = model1.two_diracs(d, (inv * 1, inv * 3))
        np.testing.assert_array_equal(model1.scale_kernel(k1, g), expected)
        # g·(a ⊗ b) = (g·a) ⊗ (g·b): scaling is an automorphism of Z_d.
        np.testing.assert_allclose(
            model1.scale_kernel(direct_conv(a, b), g),
            direct_conv(model1.scale_kernel(a, g), model1.scale_kernel(b, g)),
            atol=1e-12,
        )


def test_kernel_sdr_matches_pixel_domain():
    rng = np.random.default_rng(4)
    k1, k2 = rng.standard_normal((2, 7, 7))
    assert model1.kernel_sdr(k1, k2) == pytest.approx(rho_by_overlap(k1, k2), rel=1e-12)


def test_inverse_and_random_invertible_kernel():
    d = 13
    rng = np.random.default_rng(5)
    omega = model1.random_invertible_kernel(d, rng, support=3, rtol=0.2)
    mod = np.abs(np.fft.fft2(omega))
    assert mod.min() >= 0.2 * mod.max() and np.count_nonzero(omega) <= 9
    dirac = np.zeros((d, d))
    dirac[0, 0] = 1
    np.testing.assert_allclose(direct_conv(omega, model1.inverse_kernel(omega)), dirac, atol=1e-10)
    assert not model1.is_invertible(np.ones((d, d)))
    with pytest.raises(ValueError, match="not invertible"):
        model1.inverse_kernel(np.ones((d, d)))


def test_distribution_distance():
    rng = np.random.default_rng(6)
    t = rng.standard_normal((11, 11))
    assert model1.distribution_distance(t, np.roll(t, (3, -4), axis=(0, 1))) < 1e-12
    other = t + 0.1 * rng.standard_normal((11, 11))
    shifts = itertools.product(range(11), range(11))
    brute = min(np.linalg.norm(t - np.roll(other, s, axis=(0, 1))) for s in shifts)
    assert model1.distribution_distance(t, other) == pytest.approx(brute / np.linalg.norm(t))


def test_entangled_solution_fits_equally_but_extrapolates_differently():
    d = 13
    k1, k2 = model1.example1(d, 3, (0, 4))
    omega = model1.random_invertible_kernel(d, np.random.default_rng(7))
    k1e, k2e = model1.entangled_solution(k1, k2, omega)
    x, _ = model1.sample_model1(k1, k2, 30, np.random.default_rng(8))
    xe, _ = model1.sample_model1(k1e, k2e, 30, np.random.default_rng(8))
    np.testing.assert_allclose(xe, x, atol=1e-12)  # same images for the same latents
    true = model1.extrapolated_class(k1, k2)
    ent = model1.extrapolated_class(k1e, k2e)
    assert sorted(true) == model1.scaling_group(d)
    assert model1.distribution_distance(true[1], ent[1]) < 1e-12
    assert min(model1.distribution_distance(true[g], ent[g]) for g in range(2, d)) > 0.05
    # A translation ω (a Dirac elsewhere) keeps the extrapolated class: S-equivalent.
    shift = np.zeros((d, d))
    shift[2, 5] = 1.0
    k1t, k2t = model1.entangled_solution(k1, k2, shift)
    for g in model1.scaling_group(d):
        tg = model1.extrapolated_template(k1t, k2t, g)
        assert model1.distribution_distance(true[g], tg) < 1e-10


def test_prop5_condition_both_sides_and_rho():
    d, delta = 11, 3
    k2 = model1.eye_kernel(d, delta)
    assert model1.prop5_condition(delta, 0, 3, d) and model1.prop5_condition(delta, 0, 8, d)
    assert not model1.prop5_condition(delta, 0, 2, d)
    assert not model1.prop5_condition(delta, 0, 9, d)  # wraps around: circular distance 2
    assert not model1.prop5_condition(delta, 2, 2, d)  # diagonal overlap
    # The printed inequality holds for an overlapping pair, whose rho is not 1.
    assert model1.prop5_printed_condition(delta, 0, 1, d)
    assert not model1.prop5_condition(delta, 0, 1, d)
    for m, n in itertools.product(range(d), range(d)):
        if (m, n) == (0, 0):
            continue
        k1 = model1.two_diracs(d, (m, n))
        rho = model1.kernel_sdr(k1, k2)
        assert rho == pytest.approx(overlap_theory(k2, m, n), abs=1e-12)
        support = k2 != 0
        overlaps = bool(np.any(support & np.roll(support, (m, n), axis=(0, 1))))
        assert model1.prop5_condition_kernels(k1, k2) == (not overlaps)
        if model1.prop5_condition(delta, m, n, d):
            assert model1.prop5_condition_kernels(k1, k2)
            assert rho == pytest.approx(1.0, abs=1e-12)
    assert overlap_theory(k2, 0, 1) > 1.05


# ---------------------------------------------------------------------------- Model 2


def test_make_distribution_and_expected():
    uni = model2.make_distribution({"name": "uniform", "loc": 0.5, "scale": 1.5})
    gam = model2.make_distribution({"name": "gamma", "a": 3.0, "scale": 0.5})
    lo, hi, k, th = 0.5, 2.0, 3.0, 0.5
    ea, ea2 = (lo + hi) / 2, (lo**2 + lo * hi + hi**2) / 3
    eb, eb2 = k * th, k * (k + 1) * th**2
    assert model2.prop9_expected(uni, gam) == pytest.approx(ea2 * eb2 / (ea * eb) ** 2)
    with pytest.raises(ValueError, match="support"):
        model2.make_distribution({"name": "norm"})
    with pytest.raises(ValueError, match="spec name"):
        model2.make_distribution({"name": "no_such_law"})


def test_prop9_limits():
    a_dist = scipy.stats.uniform(loc=0.5, scale=1.5)
    b_dist = scipy.stats.lognorm(s=0.4)
    out = model2.prop9(400_000, a_dist, b_dist, np.random.default_rng(9))
    # Independent large-sample reference for E[c²]/E[c]², c = a* b*.
    rng = np.random.default_rng(10)
    c = a_dist.rvs(size=2_000_000, random_state=rng) * b_dist.rvs(size=2_000_000, random_state=rng)
    assert out["expected"] == pytest.approx((c**2).mean() / c.mean() ** 2, rel=5e-3)
    assert out["expected"] > 1.1
    assert out["tr_independent"] == pytest.approx(1.0, abs=0.01)
    assert out["tr_sqrt"] == pytest.approx(out["expected"], abs=0.01)
    a, b = np.array([1.0, 2.0]), np.array([3.0, 1.0])
    assert model2.diagonal_trace_ratio(a, b) == pytest.approx(((9 + 4) / 2) / (2.5 * 5))


# ---------------------------------------------------------------------------- dynamics


def test_ctgd_conserves_invariant_and_reaches_limit():
    for a0, b0, c in [(0.3, 2.0, 1.0), (2.0, 0.3, 1.0), (0.5, 0.7, 2.0)]:
        _, path = dynamics.ctgd(a0, b0, c, 30.0)
        level = dynamics.invariant(path[:, 0], path[:, 1])
        assert np.abs(level - level[0]).max() < 1e-9
        a, b = dynamics.ctgd_limit(a0, b0, c)
        assert a * b == pytest.approx(c) and a**2 - b**2 == pytest.approx(a0**2 - b0**2)
        np.testing.assert_allclose(path[-1], [a, b], atol=1e-8)


def _torch_steps(a0, b0, c, lr, order):
    """One step of Alg. 1 / Alg. 2 with autograd on real and imaginary parts."""
    pa = torch.tensor([np.real(a0), np.imag(a0)], dtype=torch.float64, requires_grad=True)
    pb = torch.tensor([np.real(b0), np.imag(b0)], dtype=torch.float64, requires_grad=True)
    target = torch.tensor(complex(c), dtype=torch.complex128)

    def loss():
        return (target - torch.complex(*pa) * torch.complex(*pb)).abs().square()

    opt_a, opt_b = torch.optim.SGD([pa], lr=lr), torch.optim.SGD([pb], lr=lr)
    if order == "sync":
        loss().backward()
        opt_a.step()
        opt_b.step()
    else:
        for opt in (opt_a, opt_b) if order == "a" else (opt_b, opt_a):
            opt_a.zero_grad()
            opt_b.zero_grad()
            loss().backward()
            opt.step()
    return complex(*pa.tolist()), complex(*pb.tolist())


@pytest.mark.parametrize("order", ["sync", "a", "b"])
@pytest.mark.parametrize("start", [(1.7, 0.4, 1.3), (0.8 + 0.3j, -0.2 + 1.1j, 0.5 - 0.7j)])
def test_sgd_steps_match_autograd(order, start):
    a0, b0, c = start
    if order == "sync":
        a, b = dynamics.sgd(np.array(a0), np.array(b0), [np.array(c)], 0.05)
    else:
        a, b = dynamics.asgd(np.array(a0), np.array(b0), [np.array(c)], 0.05, first=order)
    ref = _torch_steps(a0, b0, c, 0.05, order)
    assert complex(a[-1]) == pytest.approx(ref[0], abs=1e-12)
    assert complex(b[-1]) == pytest.approx(ref[1], abs=1e-12)


def test_sgd_invariant_recursion_and_drift_to_equal():
    lr, steps = 0.03, 3000
    rng = np.random.default_rng(11)
    c = dynamics.sample_targets(1.0, 1.0, steps, rng)
    a, b = dynamics.sgd(2.0, 0.5, c, lr)
    level = dynamics.invariant(a, b)
    r = c - a[:-1] * b[:-1]
    np.testing.assert_allclose(level[1:], level[:-1] * (1 - 4 * lr**2 * r**2), rtol=1e-9,
                               atol=1e-12)
    assert abs(level[-1]) < 1e-3 * abs(level[0])  # Prop. 8: towards a = b
    assert abs(a[-1] - b[-1]) < 1e-3
    # Complex coefficients (Fig. 3b): the same recursion with |r|².
    cz = c + 1j * dynamics.sample_targets(0.0, 1.0, steps, rng)
    az, bz = dynamics.sgd(1.5 + 0.5j, 0.2 - 0.4j, cz, lr, record_every=1)
    lz = dynamics.invariant(az, bz)
    rz = cz - az[:-1] * bz[:-1]
    np.testing.assert_allclose(lz[1:], lz[:-1] * (1 - 4 * lr**2 * np.abs(rz) ** 2),
                               rtol=1e-9, atol=1e-12)


def test_record_every_keeps_start_and_end():
    c = np.ones(10)
    a, b = dynamics.sgd(2.0, 0.5, c, 0.01, record_every=4)
    full_a, _ = dynamics.sgd(2.0, 0.5, c, 0.01)
    np.testing.assert_array_equal(a, full_a[[0, 4, 8, 10]])


@pytest.mark.parametrize("point", [(2.0, 0.5, 0.02), (0.4, 2.5, 0.05), (0.5, 0.6, 0.15)])
def test_expected_invariant_change_matches_monte_carlo(point):
    a0, b0, lr = point
    c0, sigma, n = 1.2, 0.8, 1_000_000
    c = dynamics.sample_targets(np.full(n, c0), sigma, 1, np.random.default_rng(12))
    start = dynamics.invariant(a0, b0)
    for run, formula in ((dynamics.sgd, dynamics.sgd_expected_invariant_change),
                         (dynamics.asgd, dynamics.asgd_expected_invariant_change)):
        a, b = run(np.full(n, a0), np.full(n, b0), c, lr)
        change = dynamics.invariant(a[-1], b[-1]) - start
        stderr = change.std() / np.sqrt(n)
        assert formula(a0, b0, c0, sigma, lr) == pytest.approx(change.mean(), abs=5 * stderr)


def test_asgd_drifts_to_b_axis():
    lr = 0.05
    c = dynamics.sample_targets(1.0, 1.0, 4000, np.random.default_rng(13))
    a, b = dynamics.asgd(1.0, 1.0, c, lr)
    assert b[-1] == pytest.approx(1 / np.sqrt(2 * lr), rel=1e-2) and a[-1] < b[-1] / 3
    a2, b2 = dynamics.asgd(1.0, 1.0, c, lr, first="b")  # mirrored order: the a axis
    assert a2[-1] == pytest.approx(1 / np.sqrt(2 * lr), rel=1e-2) and b2[-1] < a2[-1] / 3
    # On the solution set the expected change of L = a² - b² is negative (towards the b axis).
    for a0 in (0.5, 1.0, 2.0):
        assert dynamics.asgd_expected_invariant_change(a0, 1 / a0, 1.0, 1.0, 0.01) < 0


def test_fourier_sgd_keeps_kernels_real_and_equalizes_power():
    k1, k2 = model1.example1(13, 3, (0, 5))
    p, q, target = dynamics.fourier_sgd(k1, k2, 0.1, 0.05, 1500, np.random.default_rng(14),
                                        record_every=100)
    assert p.shape == (16, 13, 13)
    for coef in (p, q):
        assert np.abs(np.fft.ifft2(coef[-1]).imag).max() < 1e-10
    gap = np.abs(np.abs(p) ** 2 - np.abs(q) ** 2).max(axis=(1, 2))
    assert gap[-1] < 1e-2 * gap[0]
    np.testing.assert_allclose(target, np.fft.fft2(direct_conv(k2, k1)), atol=1e-12)


def test_eq14_trace_ratio_equals_sdr():
    rng = np.random.default_rng(15)
    for k1, k2 in [rng.standard_normal((2, 7, 7)), model1.example1(11, 3, (0, 1))]:
        tr = model2.diagonal_trace_ratio(np.fft.fft2(k1).ravel(), np.fft.fft2(k2).ravel())
        assert tr == pytest.approx(model1.kernel_sdr(k1, k2), rel=1e-12)
        assert tr == pytest.approx(rho_by_overlap(k1, k2), rel=1e-12)


# ---------------------------------------------------------------------------- icm-toy


@pytest.fixture(scope="module")
def toy_cfg():
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="toy", return_hydra_config=True)


@pytest.fixture(scope="module")
def toy_run(toy_cfg, tmp_path_factory):
    out = tmp_path_factory.mktemp("toy")
    results = run_toy(toy_cfg, output_dir=out)
    return toy_cfg, results, out


def test_run_toy_writes_results_and_figures(toy_run):
    _, results, out = toy_run
    assert json.loads((out / "results.json").read_text()) == results
    for name in ("fig2b_extrapolations", "fig3a_trajectories", "fig3b_fourier_paths"):
        assert (out / "figures" / f"{name}.png").stat().st_size > 10_000


def test_run_toy_example1_and_prop5(toy_run):
    cfg, r, _ = toy_run
    d, delta, offset = cfg.example1.d, cfg.example1.delta, list(cfg.example1.offset)
    k1, k2 = model1.example1(d, delta, offset)
    assert r["entangled_fit_error"] < 1e-12 and r["entangled_sample_max_abs_diff"] < 1e-12
    assert min(r["entangled_extrapolation_error"].values()) > 0.1
    assert r["prop5_rho"] == pytest.approx(rho_by_overlap(k1, k2), abs=1e-12)
    assert r["prop5_rho"] == pytest.approx(1.0, abs=1e-12) and r["prop5_condition"]
    group = r["prop5_group_elements"] + r["prop5_group_elements_other"]
    assert sorted(group) == list(range(1, d))
    assert len(r["prop5_group_elements"]) >= 2
    assert len(r["prop5_rho_scaled"]) == len(r["prop5_group_elements"])
    np.testing.assert_allclose(r["prop5_rho_scaled"], 1.0, atol=1e-12)
    for g, rho in zip(r["prop5_group_elements_other"], r["prop5_rho_other"], strict=True):
        inv = model1.group_inverse(g, d)
        assert rho == pytest.approx(overlap_theory(k2, inv * offset[0], inv * offset[1]))
    m, n = r["prop5_overlap_offset"]
    assert r["prop5_rho_overlapping"] == pytest.approx(overlap_theory(k2, m, n), abs=1e-12)
    assert abs(r["prop5_rho_overlapping"] - 1) > 0.05
    assert not r["prop5_condition_overlapping"] and r["prop5_printed_condition_overlapping"]


def test_run_toy_prop9(toy_run):
    cfg, r, _ = toy_run
    lo, hi = cfg.prop9.a_dist.loc, cfg.prop9.a_dist.loc + cfg.prop9.a_dist.scale
    k, th = cfg.prop9.b_dist.a, cfg.prop9.b_dist.scale
    expected = ((lo**2 + lo * hi + hi**2) / 3) * (k * (k + 1) * th**2)
    expected /= ((lo + hi) / 2 * k * th) ** 2
    assert r["prop9_expected"] == pytest.approx(expected, rel=1e-12)
    assert r["prop9_tr_independent"] == pytest.approx(1.0, abs=0.01)
    assert r["prop9_tr_sqrt"] == pytest.approx(expected, abs=0.01)


def test_run_toy_dynamics(toy_run):
    cfg, r, _ = toy_run
    lr = cfg.dynamics.lr
    assert r["ctgd_L_change"] < 1e-8 and r["ctgd_limit_error"] < 1e-6
    assert abs(r["sgd_final_L"]) < 1e-2 * abs(r["sgd_initial_L"])
    a, b = r["sgd_final_ab"]
    assert a == pytest.approx(b, abs=1e-2) and a * b == pytest.approx(cfg.dynamics.c, rel=0.3)
    a, b = r["asgd_final_ab"]
    assert b == pytest.approx(1 / np.sqrt(2 * lr), rel=1e-2) == r["asgd_b_limit"]
    assert r["asgd_final_L"] == pytest.approx(a**2 - b**2) and r["asgd_final_L"] < -0.9 / (2 * lr)
    assert r["asgd_axis"] == "b" and r["asgd_b_first_axis"] == "a"
    assert r["asgd_expected_L_change_at_init"] < 0


def test_run_toy_fourier_and_eq14(toy_run):
    _, r, _ = toy_run
    assert r["eq14_tr"] == pytest.approx(r["eq14_rho"], rel=1e-12)
    assert r["eq14_tr"] == pytest.approx(1.0, abs=1e-12)  # Prop. 5 holds for the config
    assert r["fig3b_tr_initial"] == pytest.approx(r["eq14_tr"], rel=1e-12)
    assert r["fig3b_power_gap_final"] < 1e-2 * r["fig3b_power_gap_initial"]
    assert r["fig3b_kernel_max_imag"] < 1e-10
    # Drift to |k1^| = |k2^| = sqrt|c^|: TR of the square-root solution (Prop. 9 analogue).
    assert r["fig3b_tr_final"] == pytest.approx(r["fig3b_tr_sqrt"], rel=0.1)
    assert r["fig3b_tr_sqrt"] > 1.5


def test_cli_main(tmp_path, monkeypatch):
    from icm.cli import toy

    run_dir = tmp_path / "run"
    monkeypatch.setattr(sys, "argv", ["icm-toy", f"hydra.run.dir={run_dir}",
                                      "example1.d=13", "example1.delta=3", "example1.offset=[0,4]",
                                      "entangled.group_elements=[2]", "prop9.d=1000",
                                      "dynamics.steps=50", "fourier.steps=50"])
    toy.main()
    results = json.loads((run_dir / "results.json").read_text())
    assert results["prop5_rho"] == pytest.approx(1.0) and (run_dir / ".hydra").is_dir()
    monkeypatch.setattr(sys, "argv", ["icm-toy", f"hydra.run.dir={tmp_path / 'bad'}",
                                      "example1.d=35"])
    with pytest.raises(SystemExit) as exc:
        toy.main()
    assert exc.value.code == 2
    # An unknown key: one line naming it, no run directory.
    with pytest.raises(SystemExit) as exc:
        toy.main(["example1.no_such_key=1", f"hydra.run.dir={tmp_path / 'unknown'}"])
    assert exc.value.code == 2 and not (tmp_path / "unknown").exists()

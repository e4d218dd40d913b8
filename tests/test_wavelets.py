"""Tests for the Haar scale decomposition of difference images (icm.wavelets)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icm.wavelets import haar_scales, max_haar_level, scale_components


def _random(shape=(3, 2, 16, 16), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=shape)


def _block_checkerboard(size: int, block: int) -> np.ndarray:
    """+-1 checkerboard whose squares are ``block`` pixels wide."""
    i = np.arange(size) // block
    return np.where((i[:, None] + i[None, :]) % 2 == 0, 1.0, -1.0)


def test_max_level():
    assert max_haar_level(64, 64) == 6
    assert max_haar_level(48, 64) == 4  # 48 = 3 * 2**4
    assert max_haar_level(7, 8) == 0


def test_parseval_approx_plus_details_is_total():
    diff = _random()
    report = haar_scales(diff)
    assert report.levels == 4
    # Independent total: mean over the batch of the sum of squares.
    total = np.square(diff).sum(axis=(1, 2, 3)).mean()
    assert report.total_energy == pytest.approx(total, rel=1e-12)
    assert report.approx_energy + report.energy.sum() == pytest.approx(total, rel=1e-12)
    np.testing.assert_allclose(
        report.approx_energy_per_channel + report.energy_per_channel.sum(axis=0),
        report.total_energy_per_channel,
        rtol=1e-12,
    )
    # MSE is the plain mean square of the difference, split the same way.
    assert report.total_mse == pytest.approx(np.square(diff).mean(), rel=1e-12)
    assert report.approx_mse + report.mse.sum() == pytest.approx(report.total_mse, rel=1e-12)


def test_per_channel_sums_to_total():
    report = haar_scales(_random(shape=(2, 3, 8, 16), seed=1), levels=2)
    np.testing.assert_allclose(report.energy_per_channel.sum(axis=1), report.energy, rtol=1e-12)
    assert report.total_energy_per_channel.sum() == pytest.approx(report.total_energy)
    assert report.approx_energy_per_channel.sum() == pytest.approx(report.approx_energy)
    # Per-channel MSE is over H*W pixels, the total over C*H*W values: their mean agrees.
    np.testing.assert_allclose(report.mse_per_channel.mean(axis=1), report.mse, rtol=1e-12)


def test_finest_scale_matches_block_reference():
    """Scale J energy = energy lost by replacing each 2x2 block by its mean (Haar)."""
    diff = _random(shape=(2, 3, 8, 8), seed=2)
    blocks = diff.reshape(2, 3, 4, 2, 4, 2)
    approx = blocks.sum(axis=(3, 5)) / 2  # orthonormal 2-D Haar low-pass coefficient
    reference = (np.square(diff).sum(axis=(2, 3)) - np.square(approx).sum(axis=(2, 3))).mean(0)
    report = haar_scales(diff)
    np.testing.assert_allclose(report.energy_per_channel[-1], reference, rtol=1e-12)


def test_constant_difference_is_all_approximation():
    diff = np.full((2, 3, 16, 16), 0.7)
    report = haar_scales(diff)
    assert np.abs(report.energy).max() < 1e-20
    assert report.approx_energy == pytest.approx(3 * 256 * 0.49, rel=1e-12)


@pytest.mark.parametrize("block_log2", [0, 1, 2])
def test_checkerboard_lives_at_one_scale(block_log2):
    """A pixel checkerboard is all finest detail (scale J); 2**k-pixel squares, scale J-k."""
    size, levels = 16, 4
    board = _block_checkerboard(size, 2**block_log2)
    diff = np.broadcast_to(board, (2, 3, size, size))
    report = haar_scales(diff)
    scale = levels - block_log2  # 1-based scale index
    expected = np.zeros(levels)
    expected[scale - 1] = 3 * size * size
    np.testing.assert_allclose(report.energy, expected, atol=1e-9)
    assert report.approx_energy == pytest.approx(0.0, abs=1e-9)


def test_scale_components_sum_and_band_energies():
    diff = _random(shape=(2, 3, 16, 16), seed=3)
    parts = scale_components(diff, levels=3)
    assert parts.shape == (4, 2, 3, 16, 16)
    np.testing.assert_allclose(parts.sum(axis=0), diff, atol=1e-12)
    # Orthonormality: each component's energy equals its band's coefficient energy.
    report = haar_scales(diff, levels=3)
    energies = np.square(parts).sum(axis=(3, 4)).mean(axis=1)  # (J+1, C)
    np.testing.assert_allclose(energies[0], report.approx_energy_per_channel, rtol=1e-10)
    np.testing.assert_allclose(energies[1:], report.energy_per_channel, rtol=1e-10)


def test_scale_components_of_checkerboard():
    board = np.broadcast_to(_block_checkerboard(8, 1), (1, 1, 8, 8))
    parts = scale_components(board)
    np.testing.assert_allclose(parts[-1], board, atol=1e-12)
    assert np.abs(parts[:-1]).max() < 1e-12


def test_tensor_and_array_inputs_agree():
    diff = _random(shape=(2, 1, 8, 8), seed=4)
    a = haar_scales(diff)
    b = haar_scales(torch.from_numpy(diff).float())
    np.testing.assert_allclose(a.energy, b.energy, rtol=1e-5)
    d = a.to_dict()
    assert len(d["energy_per_scale"]) == len(d["mse_per_scale"]) == 3
    assert d["total_mse"] == pytest.approx(np.square(diff).mean())


def test_bad_inputs():
    with pytest.raises(ValueError, match="diff"):
        haar_scales(np.zeros((3, 8, 8)))
    with pytest.raises(ValueError, match="levels"):
        haar_scales(np.zeros((1, 1, 8, 8)), levels=4)
    with pytest.raises(ValueError, match="levels"):
        scale_components(np.zeros((1, 1, 8, 8)), levels=0)
    with pytest.raises(ValueError, match="even"):
        haar_scales(np.zeros((1, 1, 7, 8)))

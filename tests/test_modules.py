"""Tests of icm.modules: hybrids, influence maps, NMF modules, part IoU and change locality."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.decomposition import NMF
from torch import nn

from icm.modules import (
    ModuleResult,
    best_module_for_part,
    change_locality,
    find_modules,
    hybrid,
    influence_maps,
    module_hybrid,
    module_part_iou,
    threshold_influence,
)

LATENT = 4


class TinyGenerator(nn.Module):
    """Linear → 4×4 maps → ``up1`` (ConvTranspose2d, s2) → BN+ReLU → ``up2`` → tanh, 16×16.

    With ``split=True`` the Linear output is masked so that the first half of the channels
    entering ``up1`` is zero on the right half of the maps and the second half zero on the
    left half; 2×2 stride-2 kernels never mix neighbouring pixels, so those channels can
    only change the left (resp. right) half of the image.
    """

    def __init__(self, channels: int = 6, split: bool = False, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.channels = channels
        self.fc = nn.Linear(LATENT, channels * 16)
        self.up1 = nn.ConvTranspose2d(channels, 5, kernel_size=2, stride=2)
        self.bn = nn.BatchNorm2d(5)
        self.up2 = nn.ConvTranspose2d(5, 3, kernel_size=2, stride=2)
        mask = torch.ones(channels, 4, 4)
        if split:
            half = channels // 2
            mask[:half, :, 2:] = 0
            mask[half:, :, :2] = 0
        self.register_buffer("mask", mask)
        # Non-trivial running statistics, so that train- and eval-mode outputs differ.
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(z).view(-1, self.channels, 4, 4)) * self.mask
        h = torch.relu(self.bn(self.up1(h)))
        return torch.tanh(self.up2(h))


def eval_output(model: nn.Module, z: torch.Tensor) -> torch.Tensor:
    training = model.training
    model.eval()
    with torch.no_grad():
        out = model(z)
    model.train(training)
    return out


@pytest.fixture
def model() -> TinyGenerator:
    return TinyGenerator()


@pytest.fixture
def latents() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, LATENT, generator=g), torch.randn(5, LATENT, generator=g)


# --- hybrid -----------------------------------------------------------------------------


def test_hybrid_empty_is_x_z1_and_all_is_x_z2(model, latents):
    z1, z2 = latents
    x1, x2 = eval_output(model, z1), eval_output(model, z2)
    assert not torch.allclose(x1, x2)
    assert torch.equal(hybrid(model, "up1", z1, z2, []), x1)
    assert torch.allclose(hybrid(model, "up1", z1, z2, list(range(6))), x2, atol=1e-6)
    # A boolean mask means the same as the list of its indices.
    assert torch.allclose(hybrid(model, "up1", z1, z2, torch.ones(6, dtype=torch.bool)), x2)
    # At the second level too (its cause is the BN+ReLU output, 5 channels).
    assert torch.allclose(hybrid(model, "up2", z1, z2, range(5)), x2, atol=1e-6)


def test_hybrid_subset_differs_from_both(model, latents):
    z1, z2 = latents
    x1, x2 = eval_output(model, z1), eval_output(model, z2)
    mixed = hybrid(model, "up1", z1, z2, [0, 2, 4])
    assert (mixed - x1).abs().max() > 1e-3
    assert (mixed - x2).abs().max() > 1e-3
    # The hybrid equals an independent construction: feed the edited cause by hand.
    with torch.no_grad():
        model.eval()
        h1 = torch.relu(model.fc(z1).view(-1, 6, 4, 4)) * model.mask
        h2 = torch.relu(model.fc(z2).view(-1, 6, 4, 4)) * model.mask
        h1[:, [0, 2, 4]] = h2[:, [0, 2, 4]]
        expected = torch.tanh(model.up2(torch.relu(model.bn(model.up1(h1)))))
        model.train()
    assert torch.allclose(mixed, expected, atol=1e-6)


def test_hybrid_restores_mode_and_leaves_no_hooks(model, latents):
    z1, z2 = latents
    model.train()
    model.up2.eval()  # a mixed state must come back exactly
    running = model.bn.running_mean.clone()
    out = hybrid(model, "up1", z1, z2, [1])
    assert model.training and model.bn.training and not model.up2.training
    assert torch.equal(model.bn.running_mean, running)  # eval mode: statistics untouched
    assert not out.requires_grad
    assert not model.up1._forward_pre_hooks
    # Afterwards the model runs unedited.
    assert torch.equal(eval_output(model, z1), eval_output(TinyGenerator(), z1))


def test_hybrid_single_donor_broadcasts(model, latents):
    z1, z2 = latents
    many = hybrid(model, "up1", z1, z2[:1].expand(len(z1), -1), [0, 3])
    one = hybrid(model, "up1", z1, z2[:1], [0, 3])
    assert torch.allclose(many, one)


def test_hybrid_uses_generate_and_level_names(latents):
    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = TinyGenerator()
            self.levels = {"fine": self.decoder.up2}

        def generate(self, z: torch.Tensor) -> torch.Tensor:
            return self.decoder(z)

    wrapper = Wrapper()
    z1, z2 = latents
    by_level = hybrid(wrapper, "fine", z1, z2, [1, 3], generate=wrapper.generate)
    by_path = hybrid(wrapper, "decoder.up2", z1, z2, [1, 3], generate=wrapper.generate)
    direct = hybrid(wrapper.decoder, "up2", z1, z2, [1, 3])
    assert torch.equal(by_level, by_path) and torch.allclose(by_level, direct)


def test_hybrid_bad_input(model, latents):
    z1, z2 = latents
    with pytest.raises(ValueError, match="channels"):
        hybrid(model, "up1", z1, z2, [6])
    with pytest.raises(ValueError, match="channels"):
        hybrid(model, "up1", z1, z2, torch.ones(3, dtype=torch.bool))
    with pytest.raises(ValueError, match="z2"):
        hybrid(model, "up1", z1, z2[:2], [0])
    with pytest.raises(KeyError, match="nope"):
        hybrid(model, "nope", z1, z2, [0])


# --- influence maps ---------------------------------------------------------------------


def naive_influence(model, layer, z1, z2):
    """Reference: one hybrid call per channel over all pairs, mean |Δ| over colours and pairs."""
    base = eval_output(model, z1)
    n_channels = {"up1": model.channels, "up2": 5}[layer]
    return torch.stack(
        [
            (hybrid(model, layer, z1, z2, [c]) - base).abs().mean(dim=1).mean(dim=0)
            for c in range(n_channels)
        ]
    )


def test_influence_maps_match_reference_for_any_batch_size(model):
    z = torch.randn(6, LATENT, generator=torch.Generator().manual_seed(3))
    maps = influence_maps(model, "up1", z, n_pairs=6, batch_size=7)  # chunks cross channels
    assert maps.shape == (6, 16, 16)
    assert (maps >= 0).all() and maps.sum() > 0
    # Pairs from a tensor of 6 latents: (i, i + 1 mod 6).
    reference = naive_influence(model, "up1", z, z.roll(-1, dims=0))
    assert torch.allclose(maps, reference, atol=1e-6)
    assert torch.allclose(influence_maps(model, "up1", z, n_pairs=6, batch_size=1000), maps)
    up2 = influence_maps(model, "up2", z, n_pairs=6, batch_size=4)
    assert up2.shape == (5, 16, 16)
    assert torch.allclose(up2, naive_influence(model, "up2", z, z.roll(-1, dims=0)), atol=1e-6)


def test_influence_maps_from_callable_and_pairs_beyond_n(model):
    g = torch.Generator().manual_seed(4)
    calls = []

    def sampler(n: int) -> torch.Tensor:
        calls.append(n)
        return torch.randn(n, LATENT, generator=g)

    maps = influence_maps(model, "up1", sampler, n_pairs=3)
    assert calls == [3, 3] and maps.shape == (6, 16, 16)
    z = torch.randn(3, LATENT, generator=g)
    # 6 = N(N-1) pairs of 3 latents: every ordered pair once.
    maps = influence_maps(model, "up1", z, n_pairs=6)
    z1, z2 = z[[0, 1, 2, 0, 1, 2]], z[[1, 2, 0, 2, 0, 1]]
    assert torch.allclose(maps, naive_influence(model, "up1", z1, z2), atol=1e-6)
    with pytest.raises(ValueError, match="n_pairs"):
        influence_maps(model, "up1", z, n_pairs=7)


def test_influence_maps_localized_and_modules_separate():
    model = TinyGenerator(channels=6, split=True)
    z = torch.randn(16, LATENT, generator=torch.Generator().manual_seed(5))
    maps = influence_maps(model, "up1", z, n_pairs=16)
    left, right = maps[..., :8].sum(dim=(1, 2)), maps[..., 8:].sum(dim=(1, 2))
    # Channels 0-2 live on the left half of the maps, 3-5 on the right half.
    assert (left[:3] > 0).all() and (right[3:] > 0).all()
    assert (right[:3] <= 1e-6 * left[:3]).all()
    assert (left[3:] <= 1e-6 * right[3:]).all()

    result = find_modules(maps, k=2, percentile=None)
    assert len(set(result.assignment[:3].tolist())) == 1
    assert len(set(result.assignment[3:].tolist())) == 1
    assert result.assignment[0] != result.assignment[3]
    left_module = int(result.assignment[0])
    assert result.templates[left_module][:, 8:].max() < 1e-3
    assert result.templates[1 - left_module][:, :8].max() < 1e-3

    # Smoothing spreads a left channel's influence over the border, keeping its total.
    smooth = influence_maps(model, "up1", z, n_pairs=16, sigma=1.5)
    assert smooth[0, :, 8:].sum() > 1e-3 * smooth[0].sum()
    assert torch.allclose(smooth.sum(dim=(1, 2)), maps.sum(dim=(1, 2)), rtol=1e-4)
    assert smooth.max() < maps.max()

    # Transferring the left module changes only the left half of the image.
    z1, z2 = z[:8], z[8:]
    before = hybrid(model, "up1", z1, z2, [])
    after = module_hybrid(model, "up1", z1, z2, result, left_module)
    assert torch.allclose(after, hybrid(model, "up1", z1, z2, [0, 1, 2]))
    inside = torch.zeros(16, 16, dtype=torch.bool)
    inside[:, :8] = True
    assert change_locality(before, after, inside) == pytest.approx(1.0, abs=1e-9)
    assert change_locality(before, after, ~inside) == pytest.approx(0.0, abs=1e-9)


# --- NMF modules ------------------------------------------------------------------------


def synthetic_influence(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """12 channels, each a noisy non-negative mix dominated by one of 3 block templates."""
    rng = np.random.default_rng(seed)
    blocks = np.zeros((3, 12, 12))
    blocks[0, :6, :6] = 1
    blocks[1, :6, 6:] = 1
    blocks[2, 6:, :] = 1
    truth = np.repeat(np.arange(3), 4)
    weights = rng.uniform(0, 0.2, size=(12, 3))
    weights[np.arange(12), truth] = rng.uniform(1, 2, size=12)
    maps = np.einsum("ck,khw->chw", weights, blocks) + rng.uniform(0, 0.01, size=(12, 12, 12))
    return maps, truth, blocks


def test_find_modules_recovers_known_modules():
    maps, truth, blocks = synthetic_influence()
    result = find_modules(torch.as_tensor(maps), k=3, percentile=None)
    assert isinstance(result, ModuleResult) and result.k == 3
    # Same partition as the truth, up to a relabelling of modules.
    pairs = set(zip(truth.tolist(), result.assignment.tolist(), strict=True))
    assert len(pairs) == 3 and len({m for _, m in pairs}) == 3
    # Each template lies on the block of its channels.
    for m in range(3):
        block = blocks[truth[result.members(m)[0]]] > 0
        assert result.templates[m][block].min() > 0.5
        assert result.templates[m][~block].max() < 0.2


def test_find_modules_partition_normalization_and_determinism():
    maps, _, _ = synthetic_influence(seed=2)
    result = find_modules(maps, k=3, percentile=75)
    assert result.assignment.shape == (12,) and result.loadings.shape == (12, 3)
    assert result.templates.shape == (3, 12, 12)
    members = [result.members(m) for m in range(3)]
    assert sorted(c for group in members for c in group) == list(range(12))
    assert np.allclose(result.templates.max(axis=(1, 2)), 1.0)
    assert (result.loadings >= 0).all() and (result.templates >= 0).all()
    assert np.array_equal(result.assignment, result.loadings.argmax(axis=1))
    again = find_modules(maps, k=3, percentile=75)
    assert np.array_equal(again.assignment, result.assignment)
    assert np.allclose(again.templates, result.templates)
    # Normalizing templates rescales the loadings: the product is sklearn's own NMF fit.
    thresholded = threshold_influence(maps, 75).reshape(12, -1)
    nmf = NMF(n_components=3, init="nndsvda", random_state=0, max_iter=1000)
    reference = nmf.fit_transform(thresholded) @ nmf.components_
    assert np.allclose(result.loadings @ result.templates.reshape(3, -1), reference)
    with pytest.raises(ValueError, match="module"):
        result.members(3)
    with pytest.raises(ValueError, match="k must"):
        find_modules(maps, k=13)


def test_threshold_influence_keeps_values_above_percentile():
    maps = np.arange(2 * 2 * 5, dtype=float).reshape(2, 2, 5)
    maps[1] = maps[1][::-1]
    out = threshold_influence(maps, 50)
    for c in range(2):
        level = np.median(maps[c])
        assert np.array_equal(out[c], np.where(maps[c] > level, maps[c], 0))
        assert (out[c] > 0).sum() == 5
    assert np.array_equal(threshold_influence(maps, None), maps)
    with pytest.raises(ValueError, match="percentile"):
        threshold_influence(maps, 100)


# --- part IoU and change locality -------------------------------------------------------


def test_module_part_iou_hand_computed():
    templates = np.zeros((2, 4, 4))
    templates[0, :2, :2] = 1.0  # 4 pixels, top-left
    templates[0, 0, 2] = 0.4  # below threshold: not in the binarized template
    templates[1, :, 2:] = 0.9  # 8 pixels, right half
    masks = np.zeros((3, 2, 4, 4), dtype=bool)
    masks[:, 0, :2, :3] = True  # part 0: top-left 2×3, in every image
    masks[:2, 1, 1:, 3] = True  # part 1: right column, rows 1-3, in 2 of 3 images
    masks[2, 1, :, :] = True  # in one image the whole map: mean 1/3, below 0.5
    iou = module_part_iou(torch.as_tensor(templates), masks)
    expected = np.array(
        [
            [4 / 6, 0 / 7],  # ∩ = 4, ∪ = 6 ; ∩ = 0, ∪ = 4 + 3
            [2 / 12, 3 / 8],  # ∩ = 2 (cells (0,2),(1,2)), ∪ = 8 + 6 - 2 ; ∩ = 3, ∪ = 8
        ]
    )
    assert iou.shape == (2, 2)
    assert np.allclose(iou, expected)
    assert best_module_for_part(iou, 0) == 0 and best_module_for_part(iou, 1) == 1
    empty = np.zeros((1, 1, 4, 4), dtype=bool)
    assert np.isnan(module_part_iou(np.zeros((1, 4, 4)), empty)).all()
    with pytest.raises(ValueError, match="part_index"):
        best_module_for_part(iou, 2)
    with pytest.raises(ValueError, match="masks"):
        module_part_iou(templates, masks[..., :3])


def test_change_locality_fractions():
    before = torch.zeros(2, 3, 4, 4)
    after = before.clone()
    after[0, :, 0, 0] = 1.0  # image 0: all change at (0, 0)
    after[1, 0, 0, 0] = 1.0  # image 1: energy 1 at (0, 0) and 3 at (3, 3)
    after[1, :, 3, 3] = 1.0
    mask = torch.zeros(2, 4, 4, dtype=torch.bool)
    mask[:, 0, 0] = True
    assert change_locality(before, after, mask) == pytest.approx((1.0 + 0.25) / 2)
    assert change_locality(before, after, ~mask) == pytest.approx((0.0 + 0.75) / 2)
    assert change_locality(before, after, torch.ones(4, 4, dtype=torch.bool)) == 1.0
    assert np.isnan(change_locality(before, before, mask))
    with pytest.raises(ValueError, match="mask"):
        change_locality(before, after, mask.float())

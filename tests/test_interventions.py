"""Tests for the stretch intervention, cause edits, FluoHair and the stretch probe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from icm.interventions import (
    FLUO_VARIANTS,
    edit_cause,
    fluo_hair,
    stretch,
    stretch_cause,
    stretch_probe,
)
from icm.layers import record_causes


def _grid_sample_stretch(x: torch.Tensor, factor: float, axis: str) -> torch.Tensor:
    """Reference: torch's bilinear grid_sample on a centred grid compressed by ``factor``.

    With align_corners=True, normalized -1/+1 are the first/last pixel centres, so the
    centre of the axis is 0 and reading at (target position / factor) is a centred stretch;
    padding_mode="border" replicates the edges.
    """
    b, c, h, w = x.shape
    gx = torch.linspace(-1, 1, w, dtype=x.dtype)
    gy = torch.linspace(-1, 1, h, dtype=x.dtype)
    if axis == "width":
        gx = gx / factor
    else:
        gy = gy / factor
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), dim=-1)
    grid = grid.unsqueeze(0).expand(b, h, w, 2)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


class TinyGenerator(nn.Module):
    """Latent (B, 4) -> image (B, 3, 16, 16) with levels coarse, fine, image."""

    def __init__(self, out_nonlinearity: bool = True) -> None:
        super().__init__()
        self.project = nn.Linear(4, 8 * 4 * 4)
        self.coarse = nn.ConvTranspose2d(8, 6, 5, stride=2, padding=2, output_padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.fine = nn.ConvTranspose2d(6, 5, 5, stride=2, padding=2, output_padding=1)
        self.bn2 = nn.BatchNorm2d(5)
        self.image = nn.ConvTranspose2d(5, 3, 5, stride=1, padding=2)
        self.out_nonlinearity = out_nonlinearity
        self.levels = {"coarse": self.coarse, "fine": self.fine, "image": self.image}

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        v = self.project(z).view(-1, 8, 4, 4).relu()
        v = self.bn1(self.coarse(v)).relu()
        v = self.bn2(self.fine(v)).relu()
        x = self.image(v)
        return torch.tanh(x) if self.out_nonlinearity else x


class PointwiseHead(nn.Module):
    """A 3x3 body then a 1x1 ``image`` convolution, identity or random with bias, no output
    non-linearity."""

    def __init__(self, identity: bool = True) -> None:
        super().__init__()
        self.body = nn.Conv2d(2, 3, 3, padding=1)
        self.image = nn.Conv2d(3, 3, 1, bias=not identity)
        if identity:
            with torch.no_grad():
                self.image.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
        self.levels = {"body": self.body, "image": self.image}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.image(self.body(x).relu())


def _no_hooks(model: nn.Module) -> bool:
    return all(len(m._forward_pre_hooks) == 0 for m in model.modules())


# --------------------------------------------------------------------------- stretch


def test_stretch_factor_one_is_exact_identity():
    x = torch.randn(2, 3, 8, 9)
    y = stretch(x, 1.0)
    assert torch.equal(y, x) and y is not x
    assert torch.equal(stretch(x, 1, axis="height"), x)


@pytest.mark.parametrize("factor", [1.5, 0.6, 2.0, 3.0])
@pytest.mark.parametrize("axis", ["width", "height"])
@pytest.mark.parametrize("size", [(7, 10), (8, 8), (5, 11)])
def test_stretch_matches_grid_sample(factor, axis, size):
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    torch.testing.assert_close(stretch(x, factor, axis), _grid_sample_stretch(x, factor, axis))


def test_stretch_height_is_transposed_width():
    x = torch.randn(2, 3, 6, 9)
    torch.testing.assert_close(
        stretch(x, 1.7, "height"), stretch(x.transpose(-1, -2), 1.7).transpose(-1, -2)
    )


@pytest.mark.parametrize("width", [15, 16])
def test_stretch_of_centred_symmetric_pattern_stays_centred(width):
    pos = torch.arange(width, dtype=torch.float64)
    centre = (width - 1) / 2
    bump = torch.exp(-0.5 * ((pos - centre) / 1.5) ** 2)
    x = bump.expand(3, width)  # (H, W): the same row three times
    y = stretch(x, 1.5)
    torch.testing.assert_close(y, y.flip(-1), rtol=0, atol=1e-12)  # still mirror symmetric
    mass = y[0] / y[0].sum()
    assert (mass * pos).sum().item() == pytest.approx(centre, abs=1e-9)
    # The bump is wider: its spread grows by about the factor (linear interpolation smooths).
    spread = math.sqrt((mass * (pos - centre) ** 2).sum().item())
    assert spread == pytest.approx(1.5 * 1.5, rel=0.1)


def test_stretch_enlarges_and_shrinks_with_edge_fill():
    x = torch.arange(9, dtype=torch.float64).expand(1, 9)  # a ramp 0..8, centre 4
    torch.testing.assert_close(stretch(x, 2.0)[0], 4 + (torch.arange(9.0).double() - 4) / 2)
    shrunk = stretch(x, 0.5)[0]
    assert shrunk[4] == 4 and shrunk[0] == 0 and shrunk[1] == 0 and shrunk[-1] == 8  # edge fill


def test_stretch_batched_any_leading_dims_and_dtypes():
    x = torch.randn(2, 3, 4, 6, 8)
    y = stretch(x, 1.5)
    torch.testing.assert_close(y[1, 2], stretch(x[1, 2], 1.5))
    assert stretch(x.half(), 1.5).dtype == torch.float16
    assert stretch(x.double(), 1.5).dtype == torch.float64
    ints = torch.arange(10, dtype=torch.uint8).expand(2, 10)
    out = stretch(ints, 1.5)
    assert out.dtype == torch.uint8
    expected = stretch(ints.double(), 1.5).round().to(torch.uint8)
    assert torch.equal(out, expected)


def test_stretch_is_differentiable():
    x = torch.randn(1, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: stretch(t, 1.5), (x,))


@pytest.mark.parametrize("factor", [0, -1.0, float("nan"), float("inf"), "big", True])
def test_stretch_bad_factor(factor):
    with pytest.raises(ValueError, match="intervention.factor"):
        stretch(torch.zeros(1, 4, 4), factor)


def test_stretch_bad_axis_and_input():
    with pytest.raises(ValueError, match="intervention.axis"):
        stretch(torch.zeros(1, 4, 4), 1.5, axis="depth")
    with pytest.raises(ValueError, match="x must"):
        stretch(torch.zeros(4), 1.5)


# ------------------------------------------------------------------ stretch_cause


def test_stretching_image_cause_equals_stretching_identity_output():
    torch.manual_seed(0)
    net = PointwiseHead(identity=True)
    x = torch.randn(2, 2, 8, 10)
    out = net(x)
    with stretch_cause(net, "image", 1.5):
        stretched = net(x)
    torch.testing.assert_close(stretched, stretch(out, 1.5), rtol=0, atol=1e-6)
    assert not torch.allclose(stretched, out, atol=1e-3)
    assert _no_hooks(net)


def test_stretch_commutes_with_pointwise_head_with_bias():
    """Edge fill keeps a 1x1 conv with bias commuting with the stretch, shrinking too."""
    torch.manual_seed(1)
    net = PointwiseHead(identity=False)
    x = torch.randn(2, 2, 8, 10)
    for factor in (1.5, 0.7):
        with stretch_cause(net, "image", factor):
            stretched = net(x)
        torch.testing.assert_close(stretched, stretch(net(x), factor), rtol=0, atol=1e-6)


def test_stretch_cause_on_channel_subset_only():
    torch.manual_seed(2)
    net = TinyGenerator().eval()
    z = torch.randn(3, 4)
    with record_causes(net, ["fine"]) as plain:
        net(z)
    # The recorder is registered inside the edit, so it runs after it: it sees the edit.
    with stretch_cause(net, "fine", 1.5, channels=[1, 4]), record_causes(net, ["fine"]) as seen:
        net(z)
    cause, edited = plain["fine"], seen["fine"]
    torch.testing.assert_close(edited[:, [1, 4]], stretch(cause[:, [1, 4]], 1.5))
    untouched = [0, 2, 3, 5]
    assert torch.equal(edited[:, untouched], cause[:, untouched])
    assert not torch.allclose(edited[:, [1, 4]], cause[:, [1, 4]])
    assert _no_hooks(net)


def test_stretch_cause_by_dotted_name_and_nested():
    torch.manual_seed(3)
    outer = nn.Sequential(TinyGenerator().eval())
    z = torch.randn(2, 4)
    with stretch_cause(outer, "0.fine", 1.5, channels=[0, 1, 2, 3, 4, 5]):
        whole = outer(z)
    # Nested edits of disjoint channel subsets compose into the edit of their union.
    with stretch_cause(outer, "0.fine", 1.5, channels=[0, 2, 4]):
        with stretch_cause(outer, "0.fine", 1.5, channels=[1, 3, 5]):
            nested = outer(z)
    torch.testing.assert_close(nested, whole)
    with stretch_cause(outer[0], "fine", 1.5):
        by_level = outer(z)
    torch.testing.assert_close(by_level, whole)
    with stretch_cause(outer, outer[0].fine, 1.5):
        by_module = outer(z)
    torch.testing.assert_close(by_module, whole)
    assert _no_hooks(outer)


def test_stretch_cause_hooks_removed_after_errors():
    net = TinyGenerator()
    with pytest.raises(RuntimeError, match="boom"):
        with stretch_cause(net, "coarse"):
            assert len(net.coarse._forward_pre_hooks) == 1
            raise RuntimeError("boom")
    assert _no_hooks(net)
    with pytest.raises(ValueError, match="intervention.channels"):
        with stretch_cause(net, "coarse", channels=[8]):
            net(torch.randn(2, 4))
    assert _no_hooks(net)
    with pytest.raises(ValueError, match="intervention.factor"):
        with stretch_cause(net, "coarse", factor=-2):
            pass
    with pytest.raises(KeyError, match="nowhere"):
        with stretch_cause(net, "nowhere"):
            pass
    assert _no_hooks(net)


def test_edit_cause_applies_fn_and_checks_result():
    conv = nn.Conv2d(2, 1, 3, padding=1)
    model = nn.Sequential(conv)
    x = torch.randn(1, 2, 5, 5)
    with edit_cause(model, "0", torch.zeros_like) as layer:
        assert layer is conv
        out = model(x)
    torch.testing.assert_close(out, conv.bias.view(1, 1, 1, 1).expand_as(out))
    with pytest.raises(TypeError, match="must return a tensor"):
        with edit_cause(model, "0", lambda t: None):
            model(x)
    assert _no_hooks(model)


# ---------------------------------------------------------------------- fluo_hair


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.detach().view(torch.int32).clone()


@pytest.mark.parametrize("transposed", [True, False])
def test_fluo_hair_flips_selected_inputs_and_restores_bitwise(transposed):
    torch.manual_seed(4)
    cls = nn.ConvTranspose2d if transposed else nn.Conv2d
    conv = cls(5, 3, 3, padding=1)
    weight, before = conv.weight, _bits(conv.weight)
    in_dim = 0 if transposed else 1
    sel, rest = [1, 3], [0, 2, 4]
    with fluo_hair(conv, sel):
        inside = conv.weight.detach().clone()
    assert conv.weight is weight
    assert torch.equal(_bits(conv.weight), before)
    original = weight.detach()
    assert torch.equal(
        inside.index_select(in_dim, torch.tensor(sel)),
        -original.index_select(in_dim, torch.tensor(sel)),
    )
    assert torch.equal(
        inside.index_select(in_dim, torch.tensor(rest)),
        original.index_select(in_dim, torch.tensor(rest)),
    )


@pytest.mark.parametrize("transposed", [True, False])
def test_fluo_hair_equals_negating_cause_channels(transposed):
    torch.manual_seed(5)
    conv = (nn.ConvTranspose2d if transposed else nn.Conv2d)(4, 3, 3, padding=1)
    v = torch.randn(2, 4, 6, 6)
    sel = [0, 2]
    negated = v.clone()
    negated[:, sel] = -negated[:, sel]
    with torch.no_grad():
        expected = conv(negated)
        with fluo_hair(conv, sel):
            got = conv(v)
    torch.testing.assert_close(got, expected)


def test_fluo_hair_permute_moves_the_flipped_contribution():
    torch.manual_seed(6)
    conv = nn.ConvTranspose2d(4, 3, 3, padding=1)
    v = torch.randn(2, 4, 6, 6)
    sel, perm = [1, 3], FLUO_VARIANTS["blue"]
    mask = torch.zeros(1, 4, 1, 1)
    mask[:, sel] = 1
    with torch.no_grad():
        others = conv(v * (1 - mask))  # includes the bias
        hair = conv(-v * mask) - conv.bias.view(1, -1, 1, 1)
        expected = others + hair[:, list(perm)]
        with fluo_hair(conv, sel, permute=perm):
            got = conv(v)
    torch.testing.assert_close(got, expected)


def test_fluo_hair_restores_after_error_and_checks_arguments():
    conv = nn.Conv2d(4, 3, 1)
    before = _bits(conv.weight)
    with pytest.raises(RuntimeError, match="boom"):
        with fluo_hair(conv, [0], permute=(2, 0, 1)):
            raise RuntimeError("boom")
    assert torch.equal(_bits(conv.weight), before)
    with pytest.raises(ValueError, match="permute"):
        with fluo_hair(conv, [0], permute=(0, 0, 1)):
            pass
    with pytest.raises(ValueError, match="channels"):
        with fluo_hair(conv, [4]):
            pass
    with pytest.raises(ValueError, match="groups"):
        with fluo_hair(nn.Conv2d(4, 2, 1, groups=2), [0]):
            pass
    with pytest.raises(TypeError, match="conv"):
        with fluo_hair(nn.Linear(3, 3), [0]):
            pass
    assert torch.equal(_bits(conv.weight), before)


def test_fluo_variants_are_colour_permutations():
    assert FLUO_VARIANTS["pink"] is None
    for name in ("green", "blue"):
        assert sorted(FLUO_VARIANTS[name]) == [0, 1, 2]
        assert FLUO_VARIANTS[name] != (0, 1, 2)


# ------------------------------------------------------------------- stretch_probe


def test_stretch_probe_keys_shapes_and_consistency():
    torch.manual_seed(7)
    net = TinyGenerator()
    net.train()
    net.bn2.eval()  # a mixed state that must come back as it was
    running = net.bn1.running_mean.clone()
    z = torch.randn(4, 4)
    result = stretch_probe(net, z, ["coarse", "fine", "image"], return_images=True)
    assert list(result) == ["coarse", "fine", "image", "images"]
    assert net.training and net.bn1.training and not net.bn2.training
    assert torch.equal(net.bn1.running_mean, running)  # eval mode: no BN update
    assert _no_hooks(net)
    for level in ("coarse", "fine", "image"):
        scores = result[level]
        assert set(scores) == {
            "mse",
            "energy_per_scale",
            "mse_per_scale",
            "approx_energy",
            "approx_mse",
        }
        assert len(scores["energy_per_scale"]) == len(scores["mse_per_scale"]) == 4  # 16x16
        values = [scores["mse"], scores["approx_mse"], *scores["mse_per_scale"]]
        assert all(math.isfinite(v) and v >= 0 for v in values)
        assert scores["mse"] > 0
        # Parseval: the scales (and the approximation band) split the MSE exactly.
        total = sum(scores["mse_per_scale"]) + scores["approx_mse"]
        assert total == pytest.approx(scores["mse"], rel=1e-9)
    images = result["images"]
    assert list(images) == ["normal", "coarse", "fine", "image", "stretched"]
    assert all(t.shape == (4, 3, 16, 16) for t in images.values())
    # Independent recomputation of one level's MSE.
    net.eval()
    with torch.no_grad():
        target = stretch(net(z), 1.5)
        with stretch_cause(net, "fine", 1.5):
            direct = net(z)
    assert result["fine"]["mse"] == pytest.approx((direct - target).square().mean().item())


def test_stretch_probe_factor_one_is_zero():
    net = TinyGenerator()
    result = stretch_probe(
        net, torch.randn(3, 4), ["coarse", "image"], factor=1.0, wavelet_levels=2
    )
    for level in ("coarse", "image"):
        assert result[level]["mse"] == 0.0
        assert result[level]["energy_per_scale"] == [0.0, 0.0]


def test_stretch_probe_image_level_of_pointwise_head_is_zero():
    """A 1x1 image level commutes with the stretch: its probe error vanishes, others not."""
    torch.manual_seed(8)
    net = PointwiseHead(identity=False)
    x = torch.randn(2, 2, 8, 8)
    result = stretch_probe(net, x, ["body", "image"], generate=net.forward)
    assert result["image"]["mse"] < 1e-12
    assert result["body"]["mse"] > 1e-4


def test_stretch_probe_channel_subset_and_errors():
    torch.manual_seed(9)
    net = TinyGenerator()
    z = torch.randn(2, 4)
    some = stretch_probe(net, z, "fine", channels={"fine": [0]})["fine"]["mse"]
    every = stretch_probe(net, z, "fine")["fine"]["mse"]
    assert some != every
    with pytest.raises(ValueError, match="intervention.channels"):
        stretch_probe(net, z, "fine", channels={"coarse": [0]})
    with pytest.raises(ValueError, match="intervention.factor"):
        stretch_probe(net, z, "fine", factor=0)
    with pytest.raises(ValueError, match="levels"):
        stretch_probe(net, z, [])

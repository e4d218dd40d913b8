"""Tests of the plain networks (icm.nets): shapes and cause sizes of Table 1, level names,
argument checks and DCGAN initialisation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from icm.layers import LEVELS, record_causes
from icm.nets import Decoder, Discriminator, Encoder, Generator, dcgan_init


def cause_sides(net: nn.Module, x: torch.Tensor) -> dict[str, tuple[int, int, int]]:
    """(channels, height, width) of the maps entering each level of ``net`` on input ``x``."""
    with torch.no_grad(), record_causes(net, list(net.levels)) as causes:
        net(x)
    return {name: tuple(c.shape[1:]) for name, c in causes.items()}


def test_decoder_vae_default_matches_table1():
    net = Decoder().eval()
    z = torch.randn(2, 100)
    out = net(z)
    assert out.shape == (2, 3, 64, 64)
    assert out.abs().max() <= 1.0
    sides = cause_sides(net, z)
    # Table 1, VAE: maps (8, 16, 32, 64) entering coarse..image, channels 128..16
    assert sides == {
        "coarse": (128, 8, 8),
        "intermediate": (64, 16, 16),
        "fine": (32, 32, 32),
        "image": (16, 64, 64),
    }


def test_generator_dcgan_default_matches_table1():
    net = Generator().eval()
    z = torch.randn(2, 100)
    assert net(z).shape == (2, 1, 32, 32)
    sides = cause_sides(net, z)
    assert [sides[level][1] for level in LEVELS] == [4, 8, 16, 32]
    assert [sides[level][0] for level in LEVELS] == [128, 64, 32, 16]


def test_levels_are_named_attributes_in_order():
    dec, enc, dis = (
        Decoder(8, (8, 8, 8, 8), 1, 16),
        Encoder(8, (8, 8, 8, 8), 1, 16),
        Discriminator((8, 8, 8, 8), 1, 16),
    )
    assert list(dec.levels) == ["coarse", "intermediate", "fine", "image"]
    assert list(enc.levels) == ["image", "fine", "intermediate", "coarse"]
    assert list(dis.levels) == ["image", "fine", "intermediate", "coarse"]
    modules = dict(dec.named_modules())
    for name, conv in dec.levels.items():
        assert modules[name] is conv
        assert isinstance(conv, nn.ConvTranspose2d) and conv.kernel_size == (5, 5)
    for name, conv in enc.levels.items():
        assert dict(enc.named_modules())[name] is conv
        assert isinstance(conv, nn.Conv2d) and conv.stride == (2, 2)
    assert dec.image.stride == (1, 1)
    assert [dec.levels[n].stride for n in ("coarse", "intermediate", "fine")] == [(2, 2)] * 3


@pytest.mark.parametrize(
    ("image_size", "image_channels", "gen_cls", "dis_cls"),
    [(64, 3, Decoder, Encoder), (32, 1, Generator, Discriminator)],
)
def test_encoder_levels_receive_decoder_sizes(image_size, image_channels, gen_cls, dis_cls):
    channels = (16, 8, 8, 4)
    gen = gen_cls(8, channels, image_channels, image_size)
    other = (
        dis_cls(8, channels, image_channels, image_size)
        if dis_cls is Encoder
        else dis_cls(channels, image_channels, image_size)
    )
    gen_sides = cause_sides(gen, torch.randn(2, 8))
    other_sides = cause_sides(other, torch.randn(2, image_channels, image_size, image_size))
    for level in LEVELS:
        assert other_sides[level][1:] == gen_sides[level][1:], level


def test_encoder_and_discriminator_outputs():
    enc = Encoder(latent_dim=6, channels=(8, 8, 8, 8), image_channels=3, image_size=16)
    mu, logvar = enc(torch.randn(4, 3, 16, 16))
    assert mu.shape == logvar.shape == (4, 6)
    dis = Discriminator(channels=(8, 8, 8, 8), image_channels=1, image_size=16)
    assert dis(torch.randn(4, 1, 16, 16)).shape == (4,)
    # BN after every level except the discriminator's first one
    assert isinstance(enc.image_bn, nn.BatchNorm2d)
    assert isinstance(dis.image_bn, nn.Identity) and isinstance(dis.fine_bn, nn.BatchNorm2d)


@pytest.mark.parametrize("image_size", [8, 24, 48])
def test_first_map_is_derived_from_image_size(image_size):
    net = Decoder(latent_dim=4, channels=(8, 6, 4, 2), image_channels=3, image_size=image_size)
    s0 = image_size // 8
    assert net.fc.out_features == 8 * s0 * s0
    assert net(torch.randn(2, 4)).shape == (2, 3, image_size, image_size)
    enc = Encoder(4, (8, 6, 4, 2), 3, image_size)
    assert enc(torch.randn(2, 3, image_size, image_size))[0].shape == (2, 4)


def test_other_odd_kernel_keeps_sizes():
    net = Decoder(
        latent_dim=4, channels=(4, 4, 4, 4), image_channels=1, image_size=16, kernel_size=3
    )
    assert net(torch.randn(2, 4)).shape == (2, 1, 16, 16)
    assert net.fine.kernel_size == (3, 3)


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"image_size": 60}, "model.image_size"),
        ({"image_size": 0}, "model.image_size"),
        ({"image_size": -8}, "model.image_size"),
        ({"channels": (8, 8, 8)}, "model.channels"),
        ({"channels": (8, 8, 0, 8)}, "model.channels"),
        ({"kernel_size": 4}, "model.kernel_size"),
        ({"latent_dim": 0}, "model.latent_dim"),
        ({"image_channels": 0}, "model.image_channels"),
    ],
)
def test_bad_arguments_raise_naming_the_key(kwargs, key):
    for cls in (Decoder, Generator, Encoder):
        with pytest.raises(ValueError, match=key):
            cls(**kwargs)
    if "latent_dim" not in kwargs:
        with pytest.raises(ValueError, match=key):
            Discriminator(**kwargs)


def _weights(net: nn.Module, kinds: tuple[type, ...]) -> list[nn.Module]:
    return [m for m in net.modules() if isinstance(m, kinds)]


@pytest.mark.parametrize("net", [Generator(), Discriminator()], ids=["generator", "discriminator"])
def test_dcgan_init_statistics(net):
    weights = torch.cat(
        [m.weight.flatten() for m in _weights(net, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    )
    assert weights.numel() > 100_000
    assert abs(weights.mean().item()) < 1e-3
    assert weights.std().item() == pytest.approx(0.02, rel=0.02)
    scales = torch.cat([m.weight for m in _weights(net, (nn.BatchNorm2d,))])
    assert scales.mean().item() == pytest.approx(1.0, abs=0.01)
    assert 0.01 < scales.std().item() < 0.03
    for m in _weights(net, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm2d)):
        assert torch.count_nonzero(m.bias) == 0


def test_decoder_keeps_default_init_and_dcgan_init_applies_to_any_net():
    dec = Decoder()
    # PyTorch's default (Kaiming-uniform) init of the 128→64 5×5 transposed conv is far from 0.02
    assert dec.coarse.weight.std().item() < 0.015
    assert torch.count_nonzero(dec.coarse.bias) > 0
    dec.apply(dcgan_init)
    assert dec.coarse.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(dec.coarse.bias) == 0

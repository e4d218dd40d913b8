"""Convolutional generators of paper Fig. 4b: the β-VAE Decoder and the DCGAN Generator."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from icm.layers import LEVELS
from icm.nets.common import check_architecture, check_latent_dim, first_map_size
from icm.nets.init import dcgan_init


class Decoder(nn.Module):
    """Latent → image through four transposed convolutions, the levels of paper Fig. 4b.

    ``Linear(latent_dim → channels[0]·s0²)`` with ``s0 = image_size / 8``, reshaped to
    ``(channels[0], s0, s0)``, BN + ReLU; then ``coarse`` (channels[0]→channels[1]),
    ``intermediate`` (→channels[2]), ``fine`` (→channels[3]), each a stride-2
    ``ConvTranspose2d`` that doubles the map side, BN + ReLU after each; then ``image``
    (channels[3]→image_channels, stride 1) and tanh, so images lie in [-1, 1].

    The cause of a level (the maps entering its convolution) has side s0·2^i:
    (8, 16, 32, 64) for image_size 64, (4, 8, 16, 32) for image_size 32 (Table 1).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_channels: int = 3,
        image_size: int = 64,
        kernel_size: int = 5,
    ) -> None:
        super().__init__()
        self.latent_dim = check_latent_dim(latent_dim)
        self.channels = check_architecture(channels, image_size, image_channels, kernel_size)
        self.image_channels = int(image_channels)
        self.image_size = int(image_size)
        self.first_map_size = first_map_size(image_size)
        c0, c1, c2, c3 = self.channels
        k, pad = kernel_size, kernel_size // 2

        def up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
            # stride 2 with output_padding 1: output side exactly twice the input side
            return nn.ConvTranspose2d(c_in, c_out, k, stride=2, padding=pad, output_padding=1)

        self.fc = nn.Linear(latent_dim, c0 * self.first_map_size**2)
        self.fc_bn = nn.BatchNorm2d(c0)
        self.coarse = up(c0, c1)
        self.coarse_bn = nn.BatchNorm2d(c1)
        self.intermediate = up(c1, c2)
        self.intermediate_bn = nn.BatchNorm2d(c2)
        self.fine = up(c2, c3)
        self.fine_bn = nn.BatchNorm2d(c3)
        self.image = nn.ConvTranspose2d(c3, image_channels, k, stride=1, padding=pad)

    @property
    def levels(self) -> OrderedDict[str, nn.Module]:
        """Level name → convolution, from latent to image: coarse, intermediate, fine, image."""
        return OrderedDict((name, getattr(self, name)) for name in LEVELS)

    def forward(self, z: Tensor) -> Tensor:
        """Images in [-1, 1], shape (B, image_channels, image_size, image_size), from latents."""
        s0 = self.first_map_size
        h = self.fc(z).view(z.shape[0], self.channels[0], s0, s0)
        h = torch.relu(self.fc_bn(h))
        h = torch.relu(self.coarse_bn(self.coarse(h)))
        h = torch.relu(self.intermediate_bn(self.intermediate(h)))
        h = torch.relu(self.fine_bn(self.fine(h)))
        return torch.tanh(self.image(h))


class Generator(Decoder):
    """The DCGAN generator: the Decoder architecture with DCGAN initialisation.

    Defaults follow the DCGAN column of Table 1: one image channel, 32×32 images, causes of
    side (4, 8, 16, 32).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_channels: int = 1,
        image_size: int = 32,
        kernel_size: int = 5,
    ) -> None:
        super().__init__(latent_dim, channels, image_channels, image_size, kernel_size)
        self.apply(dcgan_init)

"""The β-VAE encoder and the DCGAN discriminator: strided convolutions named by the level whose
maps they receive, so that ``encoder.fine`` sees maps of the same size as ``decoder.fine``."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from icm.layers import LEVELS
from icm.nets.common import check_architecture, check_latent_dim, halved
from icm.nets.init import dcgan_init

# Forward order of an encoder/discriminator: from the image to the coarse level.
FORWARD_LEVELS: tuple[str, ...] = tuple(reversed(LEVELS))

LEAKY_SLOPE = 0.2


class _ConvStack(nn.Module):
    """Four stride-2 Conv2d levels ``image → fine → intermediate → coarse`` with BN and leaky ReLU.

    Level ``image`` maps image_channels→channels[3], ``fine`` →channels[2],
    ``intermediate`` →channels[1], ``coarse`` →channels[0]; each halves the map side, so the
    level called L receives maps of the same side as the generator's level L.
    """

    def __init__(
        self,
        channels: Sequence[int],
        image_channels: int,
        image_size: int,
        kernel_size: int,
        norm_image_level: bool,
    ) -> None:
        super().__init__()
        self.channels = check_architecture(channels, image_size, image_channels, kernel_size)
        self.image_channels = int(image_channels)
        self.image_size = int(image_size)
        c0, c1, c2, c3 = self.channels
        k, pad = kernel_size, kernel_size // 2

        def down(c_in: int, c_out: int) -> nn.Conv2d:
            return nn.Conv2d(c_in, c_out, k, stride=2, padding=pad)

        self.image = down(image_channels, c3)
        self.image_bn = nn.BatchNorm2d(c3) if norm_image_level else nn.Identity()
        self.fine = down(c3, c2)
        self.fine_bn = nn.BatchNorm2d(c2)
        self.intermediate = down(c2, c1)
        self.intermediate_bn = nn.BatchNorm2d(c1)
        self.coarse = down(c1, c0)
        self.coarse_bn = nn.BatchNorm2d(c0)
        side = image_size
        for _ in FORWARD_LEVELS:
            side = halved(side)
        self.features = c0 * side * side

    @property
    def levels(self) -> OrderedDict[str, nn.Module]:
        """Level name → convolution, in forward order: image, fine, intermediate, coarse."""
        return OrderedDict((name, getattr(self, name)) for name in FORWARD_LEVELS)

    def _features(self, x: Tensor) -> Tensor:
        h = x
        for name in FORWARD_LEVELS:
            h = getattr(self, name)(h)
            h = F.leaky_relu(getattr(self, f"{name}_bn")(h), LEAKY_SLOPE)
        return h.flatten(1)


class Encoder(_ConvStack):
    """Gaussian posterior q(z|x) of the β-VAE: the conv stack, then Linear → (mu, logvar).

    Batch norm after every level. The non-linearity is leaky ReLU (slope 0.2) rather than
    ReLU: a dead ReLU channel gives a zero-energy cause to the next level, whose SDR pairs
    are then undefined, and the encoder's SDR is one of the measurements (paper Fig. 5).
    """

    def __init__(
        self,
        latent_dim: int = 100,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_channels: int = 3,
        image_size: int = 64,
        kernel_size: int = 5,
    ) -> None:
        super().__init__(channels, image_channels, image_size, kernel_size, norm_image_level=True)
        self.latent_dim = check_latent_dim(latent_dim)
        self.mu = nn.Linear(self.features, latent_dim)
        self.logvar = nn.Linear(self.features, latent_dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each ``(B, latent_dim)``, of images ``(B, C, H, W)``."""
        h = self._features(x)
        return self.mu(h), self.logvar(h)


class Discriminator(_ConvStack):
    """DCGAN discriminator: the conv stack (no BN after the first level), Linear → one logit.

    Leaky ReLU 0.2 and DCGAN initialisation (Radford et al. 2016). Defaults follow the DCGAN
    column of Table 1 (one channel, 32×32 images).
    """

    def __init__(
        self,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_channels: int = 1,
        image_size: int = 32,
        kernel_size: int = 5,
    ) -> None:
        super().__init__(channels, image_channels, image_size, kernel_size, norm_image_level=False)
        self.logit = nn.Linear(self.features, 1)
        self.apply(dcgan_init)

    def forward(self, x: Tensor) -> Tensor:
        """One real-vs-generated logit per image: shape ``(B,)``."""
        return self.logit(self._features(x)).squeeze(1)

"""Shared argument checks and layer helpers of the convolutional nets (paper Fig. 4b, Table 1)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

from icm.layers import LEVELS

# Number of stride-2 levels between the first map and the image (coarse, intermediate, fine).
N_UPSAMPLINGS = 3


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_architecture(
    channels: Sequence[int], image_size: int, image_channels: int, kernel_size: int
) -> tuple[int, int, int, int]:
    """Validate the shared architecture arguments; return ``channels`` as a tuple of ints.

    Each error names the config key (``model.<name>``) and what is allowed.
    """
    chans = tuple(channels)
    if len(chans) != len(LEVELS) or not all(_is_int(c) and c >= 1 for c in chans):
        raise ValueError(
            f"model.channels must be {len(LEVELS)} positive ints (coarse..fine), got {list(chans)}"
        )
    factor = 2**N_UPSAMPLINGS
    if not _is_int(image_size) or image_size < factor or image_size % factor:
        raise ValueError(
            f"model.image_size must be a positive multiple of {factor}, got {image_size}"
        )
    if not _is_int(image_channels) or image_channels < 1:
        raise ValueError(f"model.image_channels must be a positive int, got {image_channels}")
    if not _is_int(kernel_size) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"model.kernel_size must be a positive odd int, got {kernel_size}")
    return tuple(int(c) for c in chans)  # type: ignore[return-value]


def check_latent_dim(latent_dim: int) -> int:
    """Validate the latent dimension (``model.latent_dim``)."""
    if not _is_int(latent_dim) or latent_dim < 1:
        raise ValueError(f"model.latent_dim must be a positive int, got {latent_dim}")
    return int(latent_dim)


def first_map_size(image_size: int) -> int:
    """Side of the generator's first maps: image_size / 8, undone by three stride-2 levels."""
    return image_size // 2**N_UPSAMPLINGS


def halved(size: int) -> int:
    """Side after a stride-2 conv with padding kernel_size // 2 (odd kernel): ceil(size / 2)."""
    return (size + 1) // 2

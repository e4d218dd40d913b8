"""DCGAN weight initialisation (Radford et al. 2016), used by the Generator and Discriminator."""

from __future__ import annotations

import torch
from torch import nn

DCGAN_STD = 0.02

_WEIGHTED = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d)


@torch.no_grad()
def dcgan_init(module: nn.Module) -> None:
    """Initialise one module in place, for use with ``net.apply(dcgan_init)``.

    Convolution and linear weights ~ N(0, 0.02), batch-norm scales ~ N(1, 0.02), all biases 0.
    """
    if isinstance(module, _WEIGHTED):
        nn.init.normal_(module.weight, 0.0, DCGAN_STD)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, _NORMS):
        nn.init.normal_(module.weight, 1.0, DCGAN_STD)
        nn.init.zeros_(module.bias)

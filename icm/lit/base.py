"""The interface BetaVAE and DCGAN share: generator-side nets, sampling, the SDR regularizer's
alternate step, and its state in checkpoints."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from icm.lit.regularizer import SDRRegularizer

CHECKPOINT_KEY = "sdr_regularizer"


class GenerativeModule(pl.LightningModule):
    """Base of the modules: subclasses set ``generator_name`` / ``partner_name`` (attribute
    names of the generator-side and the other net), ``latent_dim`` and ``sdr_regularizer``."""

    generator_name: str
    partner_name: str
    latent_dim: int
    sdr_regularizer: SDRRegularizer

    @property
    def nets(self) -> OrderedDict[str, nn.Module]:
        """The two networks by attribute name, generator side first."""
        return OrderedDict(
            (name, getattr(self, name)) for name in (self.generator_name, self.partner_name)
        )

    def generate(self, z: Tensor) -> Tensor:
        """Images in [-1, 1], shape (B, C, H, W), from latents (B, latent_dim)."""
        return getattr(self, self.generator_name)(z)

    def forward(self, z: Tensor) -> Tensor:
        """Same as :meth:`generate`."""
        return self.generate(z)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """``n`` images from latents drawn from the prior N(0, I); a CPU ``generator`` makes the
        draw reproducible. The nets' train/eval mode is the caller's choice."""
        if n < 1:
            raise ValueError(f"n must be a positive number of samples, got {n}")
        if generator is None:
            z = torch.randn(n, self.latent_dim, device=self.device)
        else:
            z = torch.randn(n, self.latent_dim, generator=generator).to(self.device)
        return self.generate(z)

    def _process_mean(self, tensor: Tensor) -> Tensor:
        """Mean over training processes (identity on one device), so that DDP processes keep
        equal kernels after an alternate step computed on their own causes."""
        return self.trainer.strategy.reduce(tensor, reduce_op="mean")

    def regularizer_step(self) -> None:
        """Alternate SDR step (sec. 5.2.2) after the module's own step; logs
        ``train/sdr_penalty`` (the eq. 17 sum before the step, without the weight)."""
        value = self.sdr_regularizer.step(reduce=self._process_mean)
        if value is not None:
            self.log("train/sdr_penalty", value)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[CHECKPOINT_KEY] = self.sdr_regularizer.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if CHECKPOINT_KEY in checkpoint:
            self.sdr_regularizer.load_state_dict(checkpoint[CHECKPOINT_KEY])

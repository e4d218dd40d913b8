"""DCGAN (Radford et al. 2016) with the Fig. 4b generator, as a LightningModule (paper Table 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pytorch_lightning.core.optimizer import LightningOptimizer
from torch.optim import Optimizer

from icm.lit.base import GenerativeModule
from icm.lit.common import OptimizerFactory, adam, images_from_batch, plain
from icm.lit.losses import discriminator_loss, generator_loss
from icm.lit.regularizer import SDRRegularizer, regularizer_config
from icm.nets import Discriminator, Generator


class DCGAN(GenerativeModule):
    """DCGAN with the non-saturating loss (BCE with logits) and manual optimization.

    Each training batch: one generator forward pass G(z) (causes recorded there for the SDR
    regularizer); one discriminator step on ``-log D(x) - log(1 - D(G(z)))``; one generator
    step on ``-log D(G(z))`` (+ ``weight * penalty`` in regularizer mode ``joint``); then,
    in mode ``alternate``, one SDR step (sec. 5.2.2).

    Step counting: in manual optimization Lightning adds one to ``trainer.global_step`` per
    ``LightningOptimizer.step()``, which would make it twice the number of batches. Here the
    generator step goes through ``LightningOptimizer.step()`` (counted) and the
    discriminator step goes straight to the strategy's ``optimizer_step`` — the same call
    ``LightningOptimizer.step()`` makes, with precision plugins and
    ``on_before_optimizer_step`` hooks, minus the counter. So ``trainer.global_step`` equals
    the number of training batches, as for BetaVAE, and ``max_steps`` and step-based
    checkpoint or diagnostic cadences mean batches.

    Under DDP use ``strategy="ddp_find_unused_parameters_true"``: each backward pass here
    reaches only one of the two nets, which plain ``ddp`` rejects.

    Logs ``train/loss_g``, ``train/loss_d`` (and ``train/sdr_penalty`` when regularized)
    per step; ``val/loss_g``, ``val/loss_d`` (real validation images against samples from
    latents seeded by the batch index) per validation epoch. Optimizers are callables
    ``params -> Optimizer``; default Adam(lr=2e-4, betas=(0.5, 0.999)) for both.
    """

    generator_name = "generator"
    partner_name = "discriminator"

    def __init__(
        self,
        latent_dim: int = 100,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_size: int = 32,
        image_channels: int = 1,
        kernel_size: int = 5,
        optimizer_g: OptimizerFactory | None = None,
        optimizer_d: OptimizerFactory | None = None,
        regularizer: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.automatic_optimization = False
        # Plain Python values only, so that checkpoints load with weights_only=True.
        latent_dim, image_size, image_channels, kernel_size = plain(
            [latent_dim, image_size, image_channels, kernel_size]
        )
        channels = plain(channels)
        regularizer = regularizer_config(None if regularizer is None else plain(regularizer))
        self.save_hyperparameters(ignore=["optimizer_g", "optimizer_d"])

        self.generator = Generator(latent_dim, channels, image_channels, image_size, kernel_size)
        self.discriminator = Discriminator(channels, image_channels, image_size, kernel_size)
        self.latent_dim = self.generator.latent_dim
        self.optimizer_g_factory = optimizer_g if optimizer_g is not None else adam(2e-4)
        self.optimizer_d_factory = optimizer_d if optimizer_d is not None else adam(2e-4)
        self.sdr_regularizer = SDRRegularizer(self.generator, regularizer)

    def _step_uncounted(self, optimizer: LightningOptimizer) -> None:
        """``optimizer.step()`` without adding to ``trainer.global_step`` (see class doc)."""
        self.trainer.strategy.optimizer_step(optimizer.optimizer, closure=lambda: None)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        real = images_from_batch(batch)
        opt_g, opt_d = self.optimizers()
        z = torch.randn(len(real), self.latent_dim, device=real.device)
        with self.sdr_regularizer.record() as causes:
            fake = self.generator(z)

        self.toggle_optimizer(opt_d)
        loss_d = discriminator_loss(self.discriminator(real), self.discriminator(fake.detach()))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        self._step_uncounted(opt_d)
        self.untoggle_optimizer(opt_d)

        self.toggle_optimizer(opt_g)
        loss_g = generator_loss(self.discriminator(fake))
        logs = {"train/loss_g": loss_g.detach(), "train/loss_d": loss_d.detach()}
        total_g = loss_g
        if self.sdr_regularizer.mode == "joint":
            penalty = self.sdr_regularizer.penalty(causes)
            logs["train/sdr_penalty"] = penalty.detach()
            total_g = loss_g + self.sdr_regularizer.weight * penalty
        opt_g.zero_grad()
        self.manual_backward(total_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        self.regularizer_step()
        self.log_dict(logs, prog_bar=True, batch_size=len(real))

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        real = images_from_batch(batch)
        noise = torch.Generator().manual_seed(batch_idx)
        z = torch.randn(len(real), self.latent_dim, generator=noise).to(real.device)
        logits_fake = self.discriminator(self.generator(z))
        logs = {
            "val/loss_d": discriminator_loss(self.discriminator(real), logits_fake),
            "val/loss_g": generator_loss(logits_fake),
        }
        self.log_dict(logs, batch_size=len(real), sync_dist=True)

    def configure_optimizers(self) -> list[Optimizer]:
        # Order matters: self.optimizers() returns (generator's, discriminator's).
        return [
            self.optimizer_g_factory(self.generator.parameters()),
            self.optimizer_d_factory(self.discriminator.parameters()),
        ]

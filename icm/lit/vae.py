"""β-VAE (Higgins et al. 2017) with the Fig. 4b decoder, as a LightningModule (paper Table 1)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor
from torch.optim import Optimizer

from icm.lit.base import GenerativeModule
from icm.lit.common import OptimizerFactory, adam, images_from_batch, plain
from icm.lit.losses import vae_loss
from icm.lit.regularizer import SDRRegularizer, regularizer_config
from icm.nets import Decoder, Encoder


class BetaVAE(GenerativeModule):
    """β-VAE with a Gaussian posterior and a Gaussian likelihood of fixed variance.

    Loss normalisation (:func:`icm.lit.losses.vae_loss`):

    - ``recon``: squared error averaged over pixels and colour channels (per-pixel mean),
      averaged over the batch, i.e. ``((x_hat - x) ** 2).mean()``;
    - ``kl``: closed-form KL(q(z|x) || N(0, I)) summed over the latents, averaged over the
      batch; logged positive;
    - ``loss = recon + beta * kl`` (Table 1: beta = 0.0005).

    ``x_hat`` is decoded from one reparameterised posterior sample per image. With the SDR
    regularizer in mode ``joint`` the training loss also has ``weight * penalty`` (eq. 17);
    in mode ``alternate`` one regularizer step follows each optimizer step (sec. 5.2.2).

    Logs ``train/loss``, ``train/recon``, ``train/kl`` (and ``train/sdr_penalty`` when
    regularized) per step, ``val/loss``, ``val/recon``, ``val/kl`` per validation epoch.
    ``optimizer`` is a callable ``params -> Optimizer`` (a Hydra ``_partial_``); default
    Adam(lr=1e-3, betas=(0.5, 0.999)).
    """

    generator_name = "decoder"
    partner_name = "encoder"

    def __init__(
        self,
        latent_dim: int = 100,
        channels: Sequence[int] = (128, 64, 32, 16),
        image_size: int = 64,
        image_channels: int = 3,
        kernel_size: int = 5,
        beta: float = 0.0005,
        optimizer: OptimizerFactory | None = None,
        regularizer: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"model.beta must be a number >= 0, got {beta!r}")
        # Plain Python values only, so that checkpoints load with weights_only=True.
        latent_dim, image_size, image_channels, kernel_size = plain(
            [latent_dim, image_size, image_channels, kernel_size]
        )
        channels = plain(channels)
        beta = float(beta)
        regularizer = regularizer_config(None if regularizer is None else plain(regularizer))
        self.save_hyperparameters(ignore=["optimizer"])

        self.decoder = Decoder(latent_dim, channels, image_channels, image_size, kernel_size)
        self.encoder = Encoder(latent_dim, channels, image_channels, image_size, kernel_size)
        self.latent_dim = self.decoder.latent_dim
        self.beta = beta
        self.optimizer_factory = optimizer if optimizer is not None else adam(1e-3)
        self.sdr_regularizer = SDRRegularizer(self.decoder, regularizer)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior mean and log-variance, each (B, latent_dim), of images (B, C, H, W)."""
        return self.encoder(x)

    @staticmethod
    def reparameterize(
        mu: Tensor, logvar: Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (drawn on the CPU with ``generator``)."""
        if generator is None:
            eps = torch.randn_like(mu)
        else:
            eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype).to(mu.device)
        return mu + torch.exp(0.5 * logvar) * eps

    def reconstruct(self, x: Tensor) -> Tensor:
        """Decode the posterior mean of each image (deterministic reconstruction)."""
        mu, _ = self.encode(x)
        return self.decoder(mu)

    def loss_terms(
        self, x: Tensor, *, regularize: bool = True, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """``{"loss", "recon", "kl"}`` of a batch, plus ``"sdr_penalty"`` (eq. 17, without
        the weight) when ``regularize`` and the regularizer is active. In mode ``joint``
        ``loss`` includes ``weight * sdr_penalty``; in mode ``alternate`` the decoder's
        causes are kept for :meth:`regularizer_step` and ``loss`` is the VAE loss alone."""
        mu, logvar = self.encode(x)
        z = self.reparameterize(mu, logvar, generator)
        if regularize:
            with self.sdr_regularizer.record() as causes:
                x_hat = self.decoder(z)
        else:
            x_hat = self.decoder(z)
        terms = vae_loss(x_hat, x, mu, logvar, self.beta)
        if regularize and self.sdr_regularizer.mode == "joint":
            penalty = self.sdr_regularizer.penalty(causes)
            terms["sdr_penalty"] = penalty
            terms["loss"] = terms["loss"] + self.sdr_regularizer.weight * penalty
        return terms

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x = images_from_batch(batch)
        terms = self.loss_terms(x)
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, batch_size=len(x))
        return terms["loss"]

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """The VAE step, then (mode ``alternate``) one SDR regularizer step (sec. 5.2.2)."""
        super().optimizer_step(*args, **kwargs)
        self.regularizer_step()

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x = images_from_batch(batch)
        # Posterior noise seeded by the batch index: comparable val curves across epochs.
        noise = torch.Generator().manual_seed(batch_idx)
        terms = self.loss_terms(x, regularize=False, generator=noise)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, batch_size=len(x), sync_dist=True)

    def configure_optimizers(self) -> Optimizer:
        return self.optimizer_factory(self.parameters())

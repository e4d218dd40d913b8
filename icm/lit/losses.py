"""Training objectives: the β-VAE loss with a Gaussian likelihood and posterior (Higgins et al.
2017; paper Table 1) and the non-saturating GAN losses (Goodfellow et al. 2014)."""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL( N(mu, diag exp(logvar)) || N(0, I) ), summed over latents, averaged over the batch.

    Closed form per latent: -1/2 (1 + logvar - mu^2 - exp(logvar)) >= 0.
    """
    per_latent = -0.5 * (1.0 + logvar - mu.square() - logvar.exp())
    return per_latent.sum(dim=1).mean()


def reconstruction_error(x_hat: Tensor, x: Tensor) -> Tensor:
    """Squared error averaged over pixels and colour channels, then over the batch.

    This is the Gaussian log-likelihood with fixed variance up to scale and an additive
    constant; with equal-size images it is simply the mean over every element.
    """
    return F.mse_loss(x_hat, x, reduction="mean")


def vae_loss(
    x_hat: Tensor, x: Tensor, mu: Tensor, logvar: Tensor, beta: float
) -> dict[str, Tensor]:
    """β-VAE objective: ``loss = recon + beta * kl`` with the normalisations of
    :func:`reconstruction_error` (per-pixel mean) and :func:`gaussian_kl` (sum over latents,
    batch mean). Returns ``{"loss", "recon", "kl"}``; ``kl`` is the positive divergence."""
    recon = reconstruction_error(x_hat, x)
    kl = gaussian_kl(mu, logvar)
    return {"loss": recon + beta * kl, "recon": recon, "kl": kl}


def discriminator_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """-log D(x) - log(1 - D(G(z))), each term averaged over its batch (BCE with logits)."""
    real = F.binary_cross_entropy_with_logits(logits_real, torch.ones_like(logits_real))
    fake = F.binary_cross_entropy_with_logits(logits_fake, torch.zeros_like(logits_fake))
    return real + fake


def generator_loss(logits_fake: Tensor) -> Tensor:
    """Non-saturating generator loss -log D(G(z)), averaged over the batch."""
    return F.binary_cross_entropy_with_logits(logits_fake, torch.ones_like(logits_fake))

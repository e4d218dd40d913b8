"""LightningModules (BetaVAE, DCGAN), their losses and the SDR regularizer (eq. 17)."""

from icm.lit.base import GenerativeModule
from icm.lit.checkpoint import CheckpointError, load_module
from icm.lit.gan import DCGAN
from icm.lit.regularizer import SDRRegularizer, regularizer_config
from icm.lit.vae import BetaVAE

__all__ = [
    "DCGAN",
    "BetaVAE",
    "CheckpointError",
    "GenerativeModule",
    "SDRRegularizer",
    "load_module",
    "regularizer_config",
]

"""Plain ``nn.Module`` networks of paper Fig. 4b / Table 1, each exposing a ``levels`` mapping."""

from icm.nets.decoder import Decoder, Generator
from icm.nets.encoder import Discriminator, Encoder
from icm.nets.init import dcgan_init

__all__ = ["Decoder", "Discriminator", "Encoder", "Generator", "dcgan_init"]

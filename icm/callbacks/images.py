"""Sample and reconstruction grids during training (`figures/samples.png`,
`figures/reconstructions.png`), drawn from a fixed probe (rank zero only)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from icm.callbacks.probe import (
    Periodic,
    is_active,
    preserved_rng,
    probe_images,
    probe_latents,
    to_module,
    wandb_log,
    wandb_loggers,
)
from icm.layers import eval_mode
from icm.report.figures import image_grid, save_image


class ImageGrids(Periodic):
    """Save ``figures/samples.png`` (``pl_module.generate`` of ``n`` fixed latents drawn from
    N(0, I) with ``torch.Generator(seed)``) and, for models with ``reconstruct``,
    ``figures/reconstructions.png`` (probe images in odd rows, their reconstructions in the
    row below), every ``every_n_steps`` global steps and at the end of training.

    The latents and probe images live in the ``state_dict``, so a resumed run draws the
    same ones. Runs in eval mode with the global RNG forked; logs both grids as
    ``wandb.Image`` when a WandbLogger is attached.
    """

    def __init__(
        self,
        output_dir: str | Path,
        every_n_steps: int = 500,
        n: int = 64,
        seed: int = 0,
    ) -> None:
        super().__init__(every_n_steps)
        if int(n) < 1:
            raise ValueError(f"n: must be >= 1, got {n}")
        self.output_dir = Path(output_dir)
        self.n = int(n)
        self.seed = int(seed)
        self.latents: torch.Tensor | None = None
        self.images: torch.Tensor | None = None

    @property
    def figures_dir(self) -> Path:
        return self.output_dir / "figures"

    def state_dict(self) -> dict[str, Any]:
        return {"latents": self.latents, "images": self.images}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.latents = state_dict.get("latents")
        self.images = state_dict.get("images")

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_active(trainer):
            return
        latent_dim = int(pl_module.latent_dim)
        if self.latents is None or self.latents.shape != (self.n, latent_dim):
            self.latents = probe_latents(self.n, latent_dim, self.seed)
        if self.images is None and callable(getattr(pl_module, "reconstruct", None)):
            self.images = probe_images(trainer, self.n)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_active(trainer) and self.images is None and callable(
            getattr(pl_module, "reconstruct", None)
        ):
            self.images = probe_images(trainer, self.n, allow_train=True)

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        return self.save(trainer, pl_module)

    def save(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Path]:
        """Draw and write the grids now; return {name: path} of the files written."""
        if self.latents is None:
            self.on_fit_start(trainer, pl_module)
        device = pl_module.device
        nrow = math.ceil(math.sqrt(self.n))
        written: dict[str, Path] = {}
        with preserved_rng(device), eval_mode(pl_module):
            samples = pl_module.generate(to_module(self.latents, pl_module)).float().cpu()
            written["samples"] = save_image(
                image_grid(samples, nrow=nrow), self.figures_dir / "samples.png"
            )
            if self.images is not None and callable(getattr(pl_module, "reconstruct", None)):
                real = to_module(self.images, pl_module)
                recon = pl_module.reconstruct(real).float().cpu()
                written["reconstructions"] = save_image(
                    image_grid(_interleave_rows(real.float().cpu(), recon, nrow), nrow=nrow),
                    self.figures_dir / "reconstructions.png",
                )
        self._last_step = int(trainer.global_step)
        if wandb_loggers(trainer):
            import wandb

            wandb_log(
                trainer,
                {f"images/{k}": wandb.Image(str(p)) for k, p in written.items()},
                self._last_step,
            )
        return written


def _interleave_rows(first: torch.Tensor, second: torch.Tensor, nrow: int) -> torch.Tensor:
    """Batches in rows of ``nrow``: a row of ``first``, then the same row of ``second``; a
    short last row is padded with black images (-1) so pairs stay one above the other."""
    chunks = []
    for start in range(0, len(first), nrow):
        for batch in (first, second):
            row = batch[start : start + nrow]
            if len(row) < nrow:
                pad = row.new_full((nrow - len(row), *row.shape[1:]), -1.0)
                row = torch.cat([row, pad])
            chunks.append(row)
    return torch.cat(chunks)

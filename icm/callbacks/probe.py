"""Shared plumbing of the callbacks: rank-zero guard, fixed probes, RNG, loggers."""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import pytorch_lightning as pl
import torch
from torch import nn

from icm.layers import eval_mode  # re-exported: one eval-mode helper for the project

__all__ = [
    "eval_mode",
    "is_active",
    "log_scalars",
    "preserved_rng",
    "probe_images",
    "probe_latents",
    "to_module",
    "wandb_log",
    "wandb_loggers",
]


def is_active(trainer: pl.Trainer) -> bool:
    """True on the process that runs diagnostics: global rank zero only.

    Callbacks do all their work behind this guard and make no collective call inside it,
    so other ranks never wait on rank zero (no DDP deadlock).
    """
    return bool(getattr(trainer, "is_global_zero", True))


def probe_latents(n: int, latent_dim: int, seed: int) -> torch.Tensor:
    """``n`` latents from N(0, I) drawn with a private ``torch.Generator(seed)`` (on CPU)."""
    if n < 1:
        raise ValueError(f"probe_size: must be >= 1, got {n}")
    generator = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, int(latent_dim), generator=generator)


def _images_of(batch: Any) -> torch.Tensor:
    """The image tensor of a batch: the batch itself or its first element."""
    if isinstance(batch, torch.Tensor):
        return batch
    if isinstance(batch, (list, tuple)) and batch and isinstance(batch[0], torch.Tensor):
        return batch[0]
    if isinstance(batch, Mapping):
        for key in ("image", "images", "x"):
            if isinstance(batch.get(key), torch.Tensor):
                return batch[key]
    raise TypeError(f"cannot find images in a batch of type {type(batch).__name__}")


def _first_images(loaders: Any, n: int) -> torch.Tensor | None:
    """Up to ``n`` images from the first batches of a dataloader (or the first of a list)."""
    if loaders is None:
        return None
    if isinstance(loaders, (list, tuple)):
        loaders = loaders[0] if loaders else None
    elif isinstance(loaders, Mapping):
        loaders = next(iter(loaders.values()), None)
    if loaders is None:
        return None
    chunks, count = [], 0
    for batch in loaders:
        images = _images_of(batch)
        chunks.append(images[: n - count].detach().cpu())
        count += len(chunks[-1])
        if count >= n:
            break
    return torch.cat(chunks) if chunks else None


def probe_images(trainer: pl.Trainer, n: int, *, allow_train: bool = False) -> torch.Tensor | None:
    """A fixed batch of ``n`` real images (CPU), or None when the trainer has no data yet.

    Sources, in order: ``trainer.datamodule.probe_batch(n)``; the first batches of the
    datamodule's validation loader; ``trainer.val_dataloaders`` once loaded; with
    ``allow_train`` the first batches of the training loader. Loader iteration runs
    with the global RNG forked, so picking the probe does not shift training's shuffling.
    """
    datamodule = getattr(trainer, "datamodule", None)
    with torch.random.fork_rng(devices=[]):
        if datamodule is not None and callable(getattr(datamodule, "probe_batch", None)):
            return datamodule.probe_batch(n).detach().cpu()
        candidates = []
        if datamodule is not None:
            candidates.append(lambda: datamodule.val_dataloader())
        candidates.append(lambda: trainer.val_dataloaders)
        if allow_train:
            candidates.append(lambda: trainer.train_dataloader)
        for get in candidates:
            try:
                loaders = get()
            except (NotImplementedError, AttributeError, TypeError):
                # LightningDataModule raises NotImplementedError without a val loader.
                continue
            images = _first_images(loaders, n)
            if images is not None and len(images):
                return images
    return None


def to_module(x: torch.Tensor, module: nn.Module) -> torch.Tensor:
    """``x`` on the device and in the floating dtype of ``module``'s first parameter
    (a bf16-true or fp64 model gets probes it can consume)."""
    param = next(module.parameters(), None)
    if param is None:
        return x
    return x.to(device=param.device, dtype=param.dtype if x.is_floating_point() else x.dtype)


@contextmanager
def preserved_rng(device: torch.device | None = None) -> Iterator[None]:
    """Fork torch's global RNG (CPU, and the CUDA device in use) for the block, so that
    evaluations draw nothing from training's random stream."""
    devices = []
    if device is not None and device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        yield


def log_scalars(trainer: pl.Trainer, metrics: Mapping[str, float], step: int) -> None:
    """Send finite scalars to every logger of the trainer (no-op without loggers)."""
    clean = {k: float(v) for k, v in metrics.items() if v is not None and math.isfinite(v)}
    if not clean:
        return
    for logger in trainer.loggers:
        logger.log_metrics(clean, step=step)


def wandb_loggers(trainer: pl.Trainer) -> list[Any]:
    """The trainer's WandbLoggers (none when wandb is not in use)."""
    try:
        from pytorch_lightning.loggers import WandbLogger
    except ImportError:  # pragma: no cover - wandb logger ships with Lightning
        return []
    return [logger for logger in trainer.loggers if isinstance(logger, WandbLogger)]


def wandb_log(trainer: pl.Trainer, payload: Mapping[str, Any], step: int) -> None:
    """Log wandb objects (histograms, images) on the trainer's step axis, when wandb is on."""
    loggers = wandb_loggers(trainer)
    if not loggers or not payload:
        return
    for logger in loggers:
        try:
            logger.experiment.log({**payload, "trainer/global_step": step})
        except Exception as exc:  # a dashboard failure must never stop training
            warnings.warn(f"wandb logging failed at step {step}: {exc}", stacklevel=2)


class Periodic(pl.Callback):
    """Base of the probe callbacks: calls ``self.run(trainer, pl_module)`` every
    ``self.every_n_steps`` global steps and once at the end of training (never twice for
    the same step), on rank zero only. ``run`` records the step in ``self._last_step``."""

    every_n_steps: int
    _last_step: int | None = None

    def __init__(self, every_n_steps: int) -> None:
        super().__init__()
        if int(every_n_steps) < 1:
            raise ValueError(f"every_n_steps: must be >= 1, got {every_n_steps}")
        self.every_n_steps = int(every_n_steps)
        self._last_step = None

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        raise NotImplementedError

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        step = int(trainer.global_step)
        if is_active(trainer) and step % self.every_n_steps == 0 and step != self._last_step:
            self.run(trainer, pl_module)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if is_active(trainer) and int(trainer.global_step) != self._last_step:
            self.run(trainer, pl_module)

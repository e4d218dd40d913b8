"""Overrides and config composition shared by the tests that run icm-train jobs."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from icm.cli import CONF_DIR

# Overrides that shrink any icm-train job to seconds on a CPU.
TINY = [
    "model.channels=[8,8,8,8]",
    "model.latent_dim=8",
    "model.image_size=16",
    "data.datamodule.batch_size=8",
    "data.datamodule.num_workers=0",
    "trainer.max_steps=4",
    "trainer.val_check_interval=2",
    "trainer.limit_val_batches=1",
    "trainer.log_every_n_steps=1",
    "trainer.enable_progress_bar=false",
    "checkpoint_every=2",
]

# A small synthetic-faces set (the default renders 20 000 faces lazily; 96 keep splits tiny).
FACES_SMALL = ["data.datamodule.dataset.num_images=96"]
# Diagnostics every 2 steps on 8 probe images; no figures or image grids (seconds per job).
DIAG_NO_FIGURES = [
    "callbacks.diagnostics.every_n_steps=2",
    "callbacks.diagnostics.probe_size=8",
    "callbacks.diagnostics.figures=false",
    "~callbacks.images",
]


def compose_cfg(overrides: list[str], out: Path) -> DictConfig:
    """The icm-train config with ``overrides``, writing into ``out``."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[*overrides, f"paths.output_dir={out}"])

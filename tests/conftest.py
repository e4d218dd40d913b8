"""Shared test set-up: offline wandb, one torch thread, tiny configs."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

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


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(autouse=True)
def _no_shared_wandb_service(monkeypatch):
    """In-process wandb runs leave WANDB_SERVICE in os.environ, which would make every later
    subprocess attach to pytest's wandb service (where a killed run's id stays "in use").
    A user's shell has no such variable; neither do the subprocesses of the tests."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)

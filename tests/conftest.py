"""Shared test set-up: offline wandb, one torch thread, tiny configs."""

from __future__ import annotations

import os

os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HYDRA_FULL_ERROR", "0")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from tiny_configs import TINY  # noqa: E402


@pytest.fixture
def tiny_overrides() -> list[str]:
    return list(TINY)


@pytest.fixture(autouse=True)
def _no_shared_wandb_service(monkeypatch):
    """In-process wandb runs leave WANDB_SERVICE in os.environ, which would make every later
    subprocess attach to pytest's wandb service (where a killed run's id stays "in use").
    A user's shell has no such variable; neither do the subprocesses of the tests."""
    monkeypatch.delenv("WANDB_SERVICE", raising=False)

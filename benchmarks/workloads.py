"""What the benchmarks run: sizes (full and quick), the default β-VAE, data module and callbacks
composed from the project's own configs (conf/), one bare training step, and the result record."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig

REPO = Path(__file__).resolve().parent.parent
CONF_DIR = REPO / "conf"

# The regularizer of paper sec. 5.2.2 (eq. 17) in alternate mode, as in conf/regularizer/sdr.yaml.
ALTERNATE = {"mode": "alternate", "weight": 1.0, "levels": ["image", "fine", "intermediate"],
             "lr": 1e-4}


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Every size and repetition count of one benchmark run."""

    batch: int
    latent_dim: int
    channels: tuple[int, ...]
    image_size: int
    repeats: int  # interleaved rounds of the short measurements (medians over them)
    naive_pairs: int  # pairs per level timed in the naive loop, extrapolated per pair
    fit_repeats: int  # interleaved rounds of the bare / Lightning / callbacks fits
    fit_cadence: int  # scaled callback cadence of the direct overhead measurement
    fit_events: int  # callback evaluations inside the timed window
    scaling_batch: int
    scaling_channels: tuple[int, ...]  # channel sweep at map side scaling_channels_map
    scaling_channels_map: int
    scaling_maps: tuple[int, ...]  # map-side sweep at scaling_maps_channels channels
    scaling_maps_channels: int
    headline: tuple[int, int]  # (channels, map side) of the 2 GiB check
    scaling_repeats: int

    @property
    def fit_warmup(self) -> int:
        """Untimed steps at the start of each fit (one cadence, so the window holds whole
        cadences)."""
        return self.fit_cadence

    @property
    def fit_window(self) -> int:
        """Timed steps of each fit."""
        return self.fit_cadence * self.fit_events

    def model_overrides(self) -> list[str]:
        """Hydra overrides giving the model and data these sizes."""
        channels = ",".join(str(c) for c in self.channels)
        return [
            f"model.channels=[{channels}]",
            f"model.latent_dim={self.latent_dim}",
            f"model.image_size={self.image_size}",
            f"data.datamodule.batch_size={self.batch}",
            "data.datamodule.num_workers=0",
        ]


# Paper Table 1 β-VAE, batch 64; the whole run takes a few minutes on two CPU cores.
FULL = Sizes(
    batch=64, latent_dim=100, channels=(128, 64, 32, 16), image_size=64,
    repeats=9, naive_pairs=48,
    fit_repeats=3, fit_cadence=10, fit_events=2,
    scaling_batch=64, scaling_channels=(64, 128, 256, 512), scaling_channels_map=32,
    scaling_maps=(8, 16, 32, 64, 128), scaling_maps_channels=64, headline=(512, 64),
    scaling_repeats=3,
)

# Tiny sizes for the smoke test: every code path, in seconds.
QUICK = Sizes(
    batch=8, latent_dim=8, channels=(8, 8, 8, 8), image_size=16,
    repeats=2, naive_pairs=4,
    fit_repeats=1, fit_cadence=2, fit_events=1,
    scaling_batch=4, scaling_channels=(4, 8), scaling_channels_map=8,
    scaling_maps=(8, 16), scaling_maps_channels=4, headline=(8, 8),
    scaling_repeats=1,
)


def compose_config(overrides: Sequence[str], output_dir: str | Path) -> DictConfig:
    """The project's training config (conf/config.yaml) with ``overrides``; the run directory
    is ``output_dir`` (no Hydra run is active here)."""
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(
            config_name="config", overrides=[*overrides, f"paths.output_dir={output_dir}"]
        )


def make_model(cfg: DictConfig, regularizer: dict[str, Any] | None = None, seed: int = 0):
    """The configured model (default: the β-VAE of conf/model/vae.yaml), seeded; with
    ``regularizer`` replacing its regularizer config."""
    torch.manual_seed(seed)
    if regularizer is not None:
        return instantiate(cfg.model, regularizer=regularizer)
    return instantiate(cfg.model)


def make_datamodule(cfg: DictConfig):
    """The configured data module (default: synthetic faces), set up for fitting."""
    datamodule = instantiate(cfg.data.datamodule)
    datamodule.setup("fit")
    return datamodule


def make_callbacks(cfg: DictConfig) -> dict[str, Any]:
    """The callbacks of the composed config's ``callbacks`` group, instantiated, by name."""
    return {
        str(name): instantiate(node)
        for name, node in (cfg.get("callbacks") or {}).items()
        if node is not None and "_target_" in node
    }


def callback_cadences(cfg: DictConfig) -> dict[str, int]:
    """Each configured callback's cadence in training steps (``every_n_steps`` or
    ``every_n_train_steps``), by config name."""
    cadences = {}
    for name, node in (cfg.get("callbacks") or {}).items():
        if node is None:
            continue
        for key in ("every_n_steps", "every_n_train_steps"):
            if node.get(key) is not None:
                cadences[str(name)] = int(node[key])
    return cadences


def train_step(model, optimizer: torch.optim.Optimizer, x: torch.Tensor) -> None:
    """One bare training step of a BetaVAE: loss (recording the regularizer's causes when it is
    active), backward, optimizer step. The alternate SDR step is left to the caller."""
    terms = model.loss_terms(x)
    optimizer.zero_grad(set_to_none=True)
    terms["loss"].backward()
    optimizer.step()


def result(
    number: int,
    key: str,
    title: str,
    value: float,
    unit: str,
    target: float | None,
    direction: str,
    method: str,
    details: dict[str, Any],
) -> dict[str, Any]:
    """One benchmark's record: the headline ``value`` against ``target`` (``direction`` ">="
    or "<="; None: no target), how it was measured, and the details behind it."""
    if direction not in (">=", "<="):
        raise ValueError(f"direction must be '>=' or '<=', got {direction!r}")
    met = None if target is None else (value >= target if direction == ">=" else value <= target)
    return {
        "number": number,
        "key": key,
        "title": title,
        "value": float(value),
        "unit": unit,
        "target": target,
        "direction": direction,
        "met": met,
        "method": method,
        "details": details,
    }

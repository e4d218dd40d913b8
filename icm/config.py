"""Config schemas (dataclasses) and the checks that turn a bad value into one clear line.

Types and unknown keys are checked by merging each config part into its structured schema
(OmegaConf); allowed values by `validate`. Every error names the offending key.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from icm.layers import LEVELS


class ConfigError(ValueError):
    """A configuration value that cannot work; the message is one line naming the key."""


class RegularizerMode(str, Enum):
    none = "none"
    alternate = "alternate"
    joint = "joint"


class Axis(str, Enum):
    width = "width"
    height = "height"


@dataclass
class RegularizerSchema:
    mode: RegularizerMode = RegularizerMode.none
    weight: float = 0.0
    levels: list[str] = field(default_factory=list)
    lr: float = 1e-4


@dataclass
class InterventionSchema:
    factor: float = 1.5
    axis: Axis = Axis.width
    levels: list[str] = field(default_factory=lambda: list(LEVELS))


@dataclass
class _NetSchema:
    _target_: str = ""
    _convert_: str = "all"
    latent_dim: int = 100
    channels: list[int] = field(default_factory=lambda: [128, 64, 32, 16])
    image_size: int = 64
    image_channels: int = 3
    kernel_size: int = 5
    regularizer: RegularizerSchema = field(default_factory=RegularizerSchema)


@dataclass
class VAESchema(_NetSchema):
    _target_: str = "icm.lit.BetaVAE"
    beta: float = 0.0005
    optimizer: Any = None


@dataclass
class DCGANSchema(_NetSchema):
    _target_: str = "icm.lit.DCGAN"
    image_size: int = 32
    image_channels: int = 1
    optimizer_g: Any = None
    optimizer_d: Any = None


MODEL_SCHEMAS = {"icm.lit.BetaVAE": VAESchema, "icm.lit.DCGAN": DCGANSchema}


def _one_line(exc: OmegaConfBaseException, prefix: str) -> str:
    first = str(exc).strip().splitlines()[0]
    key = getattr(exc, "full_key", None)
    where = f"{prefix}.{key}" if key else prefix
    return f"{where}: {first}"


def _check_schema(part: Any, schema: type, prefix: str) -> Any:
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), part)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc, prefix)) from None


def _require(ok: bool, key: str, message: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {message}")


def _check_levels(levels: list[str], key: str) -> None:
    for level in levels:
        _require(level in LEVELS, key, f"unknown level {level!r}; allowed: {list(LEVELS)}")


def validate(cfg: DictConfig) -> None:
    """Check the parts of a composed `icm-train` config that decide whether a run can work.

    Raises ConfigError with one line naming the key and what is allowed.
    """
    try:
        model = OmegaConf.to_container(cfg.model, resolve=True)
        regularizer = OmegaConf.to_container(cfg.regularizer, resolve=True)
        intervention = OmegaConf.to_container(cfg.intervention, resolve=True)
    except OmegaConfBaseException as exc:
        raise ConfigError(_one_line(exc, "config")) from None

    target = model.get("_target_")
    _require(
        target in MODEL_SCHEMAS, "model._target_",
        f"unknown model {target!r}; allowed: {sorted(MODEL_SCHEMAS)}",
    )
    m = _check_schema(model, MODEL_SCHEMAS[target], "model")
    r = _check_schema(regularizer, RegularizerSchema, "regularizer")
    i = _check_schema(intervention, InterventionSchema, "intervention")

    _require(m.latent_dim >= 1, "model.latent_dim", f"must be >= 1, got {m.latent_dim}")
    _require(
        len(m.channels) == 4 and all(c >= 1 for c in m.channels), "model.channels",
        f"must be 4 positive channel counts (coarse..fine), got {list(m.channels)}",
    )
    _require(
        m.image_size >= 8 and m.image_size % 8 == 0, "model.image_size",
        f"must be a positive multiple of 8 (three stride-2 levels), got {m.image_size}",
    )
    _require(m.image_channels in (1, 3), "model.image_channels",
             f"must be 1 or 3, got {m.image_channels}")
    _require(m.kernel_size >= 1 and m.kernel_size % 2 == 1, "model.kernel_size",
             f"must be a positive odd number, got {m.kernel_size}")
    if target == "icm.lit.BetaVAE":
        _require(m.beta >= 0, "model.beta", f"must be >= 0, got {m.beta}")

    _require(r.weight >= 0, "regularizer.weight", f"must be >= 0, got {r.weight}")
    _require(r.lr > 0, "regularizer.lr", f"must be > 0, got {r.lr}")
    _check_levels(r.levels, "regularizer.levels")
    if r.mode != RegularizerMode.none:
        _require(len(r.levels) > 0, "regularizer.levels", "must name at least one level")

    _require(i.factor > 0, "intervention.factor", f"must be > 0, got {i.factor}")
    _check_levels(i.levels, "intervention.levels")

    _require(int(cfg.seed) >= 0, "seed", f"must be >= 0, got {cfg.seed}")
    _require(int(cfg.checkpoint_every) >= 1, "checkpoint_every",
             f"must be >= 1, got {cfg.checkpoint_every}")
    max_steps = int(cfg.trainer.get("max_steps", -1))
    _require(max_steps == -1 or max_steps >= 1, "trainer.max_steps",
             f"must be >= 1 (or -1 for no limit), got {max_steps}")
    data_channels = cfg.data.get("channels")
    _require(data_channels in (1, 3), "data.channels", f"must be 1 or 3, got {data_channels}")


def validate_multirun_job(cfg: DictConfig) -> None:
    """A multirun job may not start extra DDP ranks by re-running the command line: each
    rank would re-run the whole sweep. Spawned ranks and SLURM-started ranks are fine."""
    trainer = cfg.get("trainer") or {}
    devices = trainer.get("devices", 1)
    strategy = str(trainer.get("strategy", "auto"))
    launcher = str(OmegaConf.select(cfg, "hydra.launcher._target_", default="") or "")
    several = (isinstance(devices, int) and devices > 1) or (
        not isinstance(devices, int | str) and len(devices) > 1)
    if several and strategy.startswith("ddp") and "spawn" not in strategy \
            and "submitit" not in launcher:
        raise ConfigError(
            f"trainer.strategy: {strategy} re-runs the command line for each extra rank, "
            "which would re-run the whole sweep; in a local multirun use "
            "trainer.strategy=ddp_spawn_find_unused_parameters_true (or hydra/launcher=slurm)"
        )

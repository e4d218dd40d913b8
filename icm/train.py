"""Training job: instantiate data, model, callbacks, loggers and trainer from a composed
config, fit, and return the final metrics. `python -m icm.train` runs it like `icm-train`."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from icm.config import ConfigError, validate
from icm.run import (
    RunGuard,
    checkpoint_step,
    continue_csv_log,
    latest_checkpoint,
    update_status,
    wandb_run_id,
)

log = logging.getLogger(__name__)


def build(node: DictConfig, key: str, **kwargs: Any) -> Any:
    """`hydra.utils.instantiate` whose errors read as one line naming the config key."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        if isinstance(cause, FileNotFoundError | ValueError | TypeError):
            raise ConfigError(f"{key}: {str(cause).strip().splitlines()[0]}") from cause
        raise


def sweep_identity(cfg: DictConfig, logger_cfg: DictConfig) -> dict[str, Any]:
    """wandb group and tags of a job: a multirun's jobs share the sweep directory's name as
    their group and carry their own overrides (the swept values) as tags."""
    group, tags = logger_cfg.get("group"), list(logger_cfg.get("tags") or [])
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        if hc.mode == RunMode.MULTIRUN:
            group = group or Path(hc.sweep.dir).name
            tags += [o for o in hc.overrides.task
                     if not o.startswith(("hydra.", "+sweeps", "sweeps"))]
    except ValueError:  # not running under Hydra (API use, tests)
        pass
    return {"group": group or cfg.task_name, "tags": [t[:64] for t in tags]}


def build_loggers(cfg: DictConfig, run_dir: Path) -> list:
    """Loggers from `cfg.logger`; the wandb run id is tied to the run directory (resume)."""
    loggers = []
    for name, logger_cfg in (cfg.get("logger") or {}).items():
        if logger_cfg is None or "_target_" not in logger_cfg:
            continue
        extra: dict[str, Any] = {}
        if "Wandb" in logger_cfg._target_:
            os.environ.setdefault("WANDB_MODE", "offline" if logger_cfg.get("offline", True)
                                  else "online")
            os.environ.setdefault("WANDB_SILENT", "true")
            extra = {"id": wandb_run_id(run_dir, cfg.get("ckpt_path")), "resume": "allow",
                     **sweep_identity(cfg, logger_cfg)}
        logger = build(logger_cfg, f"logger.{name}", **extra)
        if "CSVLogger" in logger_cfg._target_ and cfg.get("ckpt_path"):
            continue_csv_log(logger, checkpoint_step(cfg.ckpt_path))
        loggers.append(logger)
    return loggers


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[pl.Callback]:
    callbacks: list[pl.Callback] = [RunGuard(run_dir)]
    for name, callback_cfg in (cfg.get("callbacks") or {}).items():
        if callback_cfg is not None and "_target_" in callback_cfg:
            callbacks.append(build(callback_cfg, f"callbacks.{name}"))
    return callbacks


def _close_wandb() -> None:
    try:
        import wandb

        if wandb.run is not None:
            wandb.finish()
    except Exception as exc:  # closing must never hide the job's own outcome
        log.warning("wandb.finish failed: %s", exc)


def train(cfg: DictConfig, run_dir: str | Path | None = None) -> dict[str, float]:
    """Fit the configured model; returns the final callback metrics as floats.

    `run_dir` defaults to `cfg.paths.output_dir` (Hydra's run directory).
    """
    validate(cfg)
    run_dir = Path(run_dir or cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.get("ckpt_path"):
        # A job that finds its own checkpoint (a SLURM requeue, a rerun into the same
        # directory) continues from it instead of training over it from step 0.
        found = latest_checkpoint(run_dir)
        if found is not None:
            log.info("continuing %s from %s", run_dir, found)
            cfg = cfg.copy()
            with open_dict(cfg):
                cfg.ckpt_path = str(found)
    pl.seed_everything(int(cfg.seed), workers=True)

    datamodule = build(cfg.data.datamodule, "data")
    model = build(cfg.model, "model")
    callbacks = build_callbacks(cfg, run_dir)
    loggers = build_loggers(cfg, run_dir)
    trainer: pl.Trainer = build(cfg.trainer, "trainer", callbacks=callbacks,
                                logger=loggers or False)

    if trainer.is_global_zero:
        for lg in loggers:
            lg.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    ckpt_path = cfg.get("ckpt_path")
    if ckpt_path and not Path(ckpt_path).is_file():
        raise FileNotFoundError(f"ckpt_path: no checkpoint file at {ckpt_path}")
    try:
        trainer.fit(model, datamodule=datamodule, ckpt_path=ckpt_path)
    finally:
        _close_wandb()
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    if trainer.is_global_zero:
        update_status(run_dir, metrics=metrics)
    return metrics


if __name__ == "__main__":
    from icm.cli.train import main

    main()

"""Run-directory bookkeeping for `icm-train`: status file, wandb run id, resume, guards.

A run directory is finished when `run.json` says `"status": "completed"`; a killed run
keeps `checkpoints/last.ckpt` and is resumed in place with `icm-train resume=<dir>`.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities.exceptions import SIGTERMException

STATUS_FILE = "run.json"
WANDB_ID_FILE = "wandb_run_id"
LAST_CKPT = Path("checkpoints") / "last.ckpt"


def write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    """Write JSON through a temporary file and os.replace: readers never see half a file."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str))
    os.replace(tmp, path)


def read_status(run_dir: str | Path) -> dict[str, Any]:
    path = Path(run_dir) / STATUS_FILE
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}


def update_status(run_dir: str | Path, **fields: Any) -> dict[str, Any]:
    status = read_status(run_dir)
    status.update(fields, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_json_atomic(Path(run_dir) / STATUS_FILE, status)
    return status


def is_rank_zero() -> bool:
    """True unless a launcher (Lightning, torchrun, SLURM) says this process is another rank."""
    return all(int(os.environ.get(v, "0") or 0) == 0 for v in ("RANK", "LOCAL_RANK",
                                                               "SLURM_PROCID"))


def wandb_run_id(run_dir: str | Path, ckpt_path: str | None = None) -> str:
    """The wandb run id of this run: reused from the run directory (or from the run that
    wrote `ckpt_path`) so that a resumed job continues the same wandb run. A new id is
    derived from the run directory's path, so every rank of a DDP job agrees on it; only
    rank zero writes it down."""
    candidates = [Path(run_dir) / WANDB_ID_FILE]
    if ckpt_path:
        candidates.append(Path(ckpt_path).resolve().parent.parent / WANDB_ID_FILE)
    for path in candidates:
        if path.exists() and path.read_text().strip():
            run_id = path.read_text().strip()
            break
    else:
        run_id = hashlib.sha1(str(Path(run_dir).resolve()).encode()).hexdigest()[:12]
    if is_rank_zero():
        (Path(run_dir) / WANDB_ID_FILE).write_text(run_id)
    return run_id


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The checkpoint to continue a run directory from: the newest (by global step) of
    `checkpoints/last.ckpt` and the `hpc_ckpt_*.ckpt` files Lightning writes on SLURM
    requeue; None when there is none."""
    run_dir = Path(run_dir)
    found = [p for p in [run_dir / LAST_CKPT, *run_dir.glob("hpc_ckpt_*.ckpt"),
                         *(run_dir / "checkpoints").glob("hpc_ckpt_*.ckpt")] if p.is_file()]
    if not found:
        return None
    return max(found, key=lambda p: (checkpoint_step(p), p.stat().st_mtime))


def checkpoint_step(ckpt_path: str | Path) -> int:
    """Global step stored in a Lightning checkpoint (weights-only load: no code runs)."""
    return int(torch.load(ckpt_path, map_location="cpu", weights_only=True)["global_step"])


def continue_csv_log(logger: Any, max_step: int) -> int:
    """Keep the rows (step <= max_step) of an existing `metrics.csv` when a CSVLogger resumes
    in the same directory; Lightning's writer would otherwise delete the file. Returns the
    number of rows kept. Rows logged after the checkpoint being resumed are dropped, so each
    step appears once."""
    path = Path(logger.log_dir) / "metrics.csv"
    rows: list[dict[str, str]] = []
    fields: list[str] = []
    if path.is_file():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step") and int(float(r["step"])) <= max_step]
    writer = logger.experiment  # creating the writer removes the old file
    if rows:
        with path.open("w", newline="") as f:
            out = csv.DictWriter(f, fieldnames=fields)
            out.writeheader()
            out.writerows(rows)
        writer.metrics_keys = sorted(fields)
    return len(rows)


class RunGuard(pl.Callback):
    """Keeps the run directory honest.

    - a non-finite training metric stops the run with a clear error before any checkpoint
      of the broken weights is written (this callback runs before ModelCheckpoint, which
      Lightning always places last); the last good `last.ckpt` stays;
    - SIGTERM (SLURM pre-emption, `kill`): Lightning stops at the end of the current batch
      and this callback saves `checkpoints/last.ckpt` before the process exits;
    - `checkpoints/last.ckpt` is written at the end of training, whatever the cadence;
    - `run.json` records running / completed / failed / interrupted and the global step.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)

    @property
    def last_ckpt(self) -> Path:
        return self.run_dir / LAST_CKPT

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.is_global_zero:
            update_status(self.run_dir, status="running", global_step=trainer.global_step)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for name, value in trainer.callback_metrics.items():
            if not name.startswith("train/") or not isinstance(value, torch.Tensor):
                continue
            if value.numel() == 1 and not math.isfinite(float(value)):
                raise FloatingPointError(
                    f"{name} is {float(value)} at step {trainer.global_step}; training stopped. "
                    f"Last good checkpoint: {self.last_ckpt if self.last_ckpt.exists() else 'none'}"
                )

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # ModelCheckpoint saves every `checkpoint_every` steps; the final step is saved here
        # so `last.ckpt` always holds the end of training (all ranks call save_checkpoint).
        trainer.save_checkpoint(self.last_ckpt)
        if trainer.is_global_zero:
            update_status(self.run_dir, status="completed", global_step=trainer.global_step)

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.last_ckpt)
            if trainer.is_global_zero:
                update_status(self.run_dir, status="interrupted", global_step=trainer.global_step,
                              reason="SIGTERM: checkpoint saved")
        elif trainer.is_global_zero:
            update_status(self.run_dir, status="failed", global_step=trainer.global_step,
                          reason=f"{type(exception).__name__}: {exception}"[:500])

"""Faults a long training run meets: SIGKILL and resume, SIGTERM (pre-emption), a
non-finite loss, and determinism of the first steps for a given seed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_configs import FACES_SMALL, compose_cfg

from icm.callbacks.records import read_records
from icm.train import train

CADENCE = ["checkpoint_every=10", "callbacks.diagnostics.every_n_steps=10",
           "callbacks.diagnostics.probe_size=8", "callbacks.diagnostics.figures=false",
           "callbacks.images.every_n_steps=1000", "callbacks.images.n=8"]


def start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "icm.train", *args], cwd=cwd, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def wait_for_records(path: Path, n: int, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if path.exists() and len(path.read_text().splitlines()) >= n:
            return
        if proc.poll() is not None:
            raise AssertionError(f"run ended early: {proc.stderr.read()[-2000:]}")
        time.sleep(0.2)
    raise AssertionError("no diagnostics records in time")


def diagnostics_lines(run_dir: Path) -> list[dict]:
    lines = (run_dir / "diagnostics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]  # every line parses


@pytest.mark.slow
def test_sigkill_then_resume_finishes_at_the_requested_step(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides, *FACES_SMALL, *CADENCE, "trainer.max_steps=80", "logger=[wandb,csv]"]
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_records(run_dir / "diagnostics.jsonl", 2, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    wandb_id = (run_dir / "wandb_run_id").read_text()
    killed_at = max(r["step"] for r in read_records(run_dir / "diagnostics.jsonl"))
    assert killed_at < 80

    resumed = subprocess.run([sys.executable, "-m", "icm.train", f"resume={run_dir}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600,
                             env={**os.environ, "WANDB_MODE": "offline"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 80
    steps = [r["step"] for r in diagnostics_lines(run_dir)]
    assert steps == list(range(10, 81, 10))  # every evaluation once, in order
    assert (run_dir / "wandb_run_id").read_text() == wandb_id
    runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(wandb_id) for r in runs)
    assert json.loads((run_dir / "run.json").read_text())["status"] == "completed"


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exit(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides, *FACES_SMALL, *CADENCE, "trainer.max_steps=400",
            "checkpoint_every=1000", "logger=none", "callbacks.diagnostics.every_n_steps=5"]
    proc = start([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    wait_for_records(run_dir / "diagnostics.jsonl", 2, proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "interrupted"
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert 10 <= ckpt["global_step"] < 400 and ckpt["global_step"] == status["global_step"]


def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(
    tmp_path, tiny_overrides, monkeypatch
):
    import icm.lit.vae as vae_module

    calls = {"n": 0}
    real_loss = vae_module.vae_loss

    def loss_turning_nan(*args, **kwargs):
        terms = real_loss(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] > 3:  # training steps 1..3 fine, step 4 NaN
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(vae_module, "vae_loss", loss_turning_nan)
    out = tmp_path / "run"
    cfg = compose_cfg([*tiny_overrides, *FACES_SMALL, "trainer.max_steps=8", "checkpoint_every=2",
                       "trainer.val_check_interval=100", "logger=none",
                       "callbacks=minimal"], out)
    with pytest.raises(FloatingPointError, match=r"train/loss is nan at step 4"):
        train(cfg)
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2
    weights = [v for v in ckpt["state_dict"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in weights)
    assert json.loads((out / "run.json").read_text())["status"] == "failed"


def losses(run_dir: Path) -> list[float]:
    with (run_dir / "csv" / "metrics.csv").open() as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


def test_same_seed_same_losses_different_seed_different(tmp_path, tiny_overrides):
    common = [*tiny_overrides, *FACES_SMALL, "trainer.max_steps=50",
              "trainer.val_check_interval=100", "logger=csv", "callbacks=none",
              "checkpoint_every=1000"]
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        train(compose_cfg([*common, f"seed={seed}"], tmp_path / name))
        runs[name] = losses(tmp_path / name)
    assert len(runs["a"]) == 50
    assert runs["a"] == runs["b"]
    assert runs["a"] != runs["c"]

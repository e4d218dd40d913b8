"""DDP through icm-train (`trainer=ddp_cpu`: two CPU processes over gloo): one run directory
for both ranks, diagnostics written once per step, one wandb run, a checkpoint that loads."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from tiny_configs import DIAG_NO_FIGURES, FACES_SMALL

from icm.callbacks.records import read_records
from icm.lit.checkpoint import load_module


@pytest.mark.slow
def test_ddp_cpu_run_writes_one_run_directory(tmp_path, tiny_overrides):
    # No hydra.run.dir: the default one carries a time stamp, and rank 1, which Lightning
    # starts by re-running the command line, must land in rank 0's directory.
    args = [*tiny_overrides, *FACES_SMALL, *DIAG_NO_FIGURES, "trainer=ddp_cpu", "logger=wandb",
            f"paths.root_dir={tmp_path}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "icm.train", *args], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    run_dirs = [p.parent for p in tmp_path.rglob(".hydra")]
    assert len(run_dirs) == 1, run_dirs
    run_dir = run_dirs[0]
    # both ranks worked in it: rank 1 logs under its own job name
    assert (run_dir / "train_ddp_process_1.log").is_file()

    steps = [r["step"] for r in read_records(run_dir / "diagnostics.jsonl")]
    assert steps == [2, 4]  # once per evaluation, rank zero only

    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["global_step"] == 4

    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 1
    assert wandb_runs[0].name.endswith((run_dir / "wandb_run_id").read_text().strip())
    assert len(list(tmp_path.rglob("wandb_run_id"))) == 1

    ckpt_path = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    module = load_module(ckpt_path, expect="vae")
    for name, value in module.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][name]), name
    images = module.generate(torch.zeros(2, module.latent_dim))
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()

"""icm-train end to end: every config file composes and instantiates, each model × dataset
trains a few steps, a run resumes where it stopped, bad values fail with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from PIL import Image
from tiny_configs import FACES_SMALL, compose_cfg

from icm.cli import CONF_DIR
from icm.train import train

DIAG_FAST = [
    "callbacks.diagnostics.every_n_steps=2",
    "callbacks.diagnostics.probe_size=8",
    "callbacks.images.every_n_steps=2",
    "callbacks.images.n=8",
]


def write_images(folder: Path, n: int, size: tuple[int, int] = (40, 48)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        array = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(array).save(folder / f"{i:06d}.jpg")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("group", ["model", "data", "regularizer", "trainer", "logger",
                                   "callbacks", "intervention", "debug", "experiment"])
def test_every_config_file_composes_and_instantiates(group, tmp_path, tiny_overrides):
    write_images(tmp_path / "imgs", 4, size=(178, 218))
    for option in options(group):
        overrides = [f"{group}={option}"]
        if group == "data":
            overrides += ["data.datamodule.batch_size=2", "data.datamodule.val_fraction=0.25"]
            if option in ("celeba", "folder"):
                overrides.append(f"data.root={tmp_path / 'imgs'}")
        cfg = compose_cfg(overrides, tmp_path / option)
        if group == "trainer" and cfg.trainer.accelerator == "gpu":
            assert cfg.trainer.devices >= 1  # no GPU here: composed, not instantiated
            continue
        if group == "trainer":
            instantiate(cfg.trainer, logger=False)
        elif group == "logger":
            for lg in (cfg.logger or {}).values():
                assert "_target_" in lg
        elif group == "callbacks":
            for cb in (cfg.callbacks or {}).values():
                instantiate(cb)
        elif group == "data":
            dm = instantiate(cfg.data.datamodule)
            assert dm.batch_size >= 1
        else:
            instantiate(cfg.model)


@pytest.mark.parametrize(
    "model,data,extra",
    [
        ("vae", "faces", FACES_SMALL),
        ("dcgan", "faces", FACES_SMALL),
        ("vae", "lfw", []),
        ("dcgan", "lfw", []),
        ("vae", "folder", ["data.datamodule.val_fraction=0.25"]),
        ("vae", "celeba", ["data.datamodule.val_fraction=0.25"]),
    ],
)
def test_each_model_and_dataset_trains(model, data, extra, tmp_path, tiny_overrides):
    root = tmp_path / "images"
    if data == "celeba":
        write_images(root / "img_align_celeba", 24, size=(178, 218))
    elif data == "folder":
        write_images(root, 24)
    out = tmp_path / "run"
    if data in ("celeba", "folder"):
        extra = [*extra, f"data.root={root}"]
    cfg = compose_cfg([*tiny_overrides, f"model={model}", f"data={data}", "logger=csv",
                       *DIAG_FAST, *extra], out)
    metrics = train(cfg)
    assert (out / "checkpoints" / "last.ckpt").is_file()
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    key = "train/loss" if model == "vae" else "train/loss_g"
    assert np.isfinite(metrics[key])
    ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 4
    assert (out / "figures" / "samples.png").is_file()


def run_cli(args: list[str], cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", "icm.train", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow
def test_resume_continues_step_optimizer_metrics_and_wandb_run(tmp_path, tiny_overrides):
    run_dir = tmp_path / "run"
    args = [*tiny_overrides, *FACES_SMALL, *DIAG_FAST, "logger=[csv,wandb]"]
    first = run_cli([*args, f"hydra.run.dir={run_dir}"], tmp_path)
    assert first.returncode == 0, first.stderr[-2000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 4
    adam_steps = [s["step"] for s in ckpt["optimizer_states"][0]["state"].values()]
    assert all(float(s) == 4 for s in adam_steps)
    wandb_id = (run_dir / "wandb_run_id").read_text()

    second = run_cli([f"resume={run_dir}", "trainer.max_steps=8"], tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 8
    adam_steps = [s["step"] for s in ckpt["optimizer_states"][0]["state"].values()]
    assert all(float(s) == 8 for s in adam_steps)
    assert (run_dir / "wandb_run_id").read_text() == wandb_id
    wandb_runs = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(wandb_runs) == 2 and all(r.name.endswith(wandb_id) for r in wandb_runs)
    rows = (run_dir / "csv" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    steps = {int(r.split(",")[header.index("step")]) for r in rows[1:]}
    assert max(steps) >= 6 and min(steps) <= 2  # one metrics file, both halves
    records = [json.loads(line) for line in (run_dir / "diagnostics.jsonl").open()]
    diag_steps = [r["step"] for r in records]
    assert diag_steps == sorted(set(diag_steps)) and max(diag_steps) == 8
    status = json.loads((run_dir / "run.json").read_text())
    assert status["status"] == "completed" and status["global_step"] == 8


def run_main_in_process(args: list[str], capsys) -> tuple[int, str]:
    from icm.cli.train import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "override,key",
    [
        ("model=transformer", "model"),
        ("model.beta=-1", "model.beta"),
        ("model.image_size=20", "model.image_size"),
        ("model.latent_dim=abc", "model.latent_dim"),
        ("regularizer=sdr regularizer.levels=[eyes]", "regularizer.levels"),
        ("intervention.factor=0", "intervention.factor"),
        ("model.no_such_key=1", "no_such_key"),
    ],
)
def test_bad_value_fails_with_one_line_naming_the_key(override, key, tmp_path, capsys):
    code, err = run_main_in_process([*override.split(), f"hydra.run.dir={tmp_path / 'run'}"],
                                    capsys)
    assert code != 0
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert key in lines[0]
    assert not (tmp_path / "run").exists()


def test_bad_sweep_value_fails_before_any_job(tmp_path, capsys):
    code, err = run_main_in_process(["-m", "model.beta=0.1,-1",
                                     f"hydra.sweep.dir={tmp_path / 'sweep'}"], capsys)
    assert code != 0 and "model.beta" in err
    assert not (tmp_path / "sweep").exists()


def test_missing_celeba_folder_fails_with_one_line(tmp_path):
    result = run_cli(["data=celeba", f"data.root={tmp_path / 'nowhere'}",
                      f"hydra.run.dir={tmp_path / 'run'}", "logger=none"], tmp_path)
    assert result.returncode != 0
    errors = [ln for ln in result.stderr.splitlines() if "error" in ln.lower()]
    assert len(errors) == 1 and "data.root" in errors[0], result.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()
    status = json.loads((tmp_path / "run" / "run.json").read_text())
    assert status["status"] == "failed"


def test_multirun_with_command_line_ddp_is_refused(tmp_path, capsys):
    code, err = run_main_in_process(["-m", "trainer=ddp_cpu", "seed=0,1",
                                     f"hydra.sweep.dir={tmp_path / 'sweep'}"], capsys)
    assert code != 0 and "trainer.strategy" in err and "spawn" in err
    assert not (tmp_path / "sweep").exists()


def test_rerun_into_the_same_directory_continues_instead_of_restarting(tmp_path,
                                                                        tiny_overrides):
    out = tmp_path / "run"
    base = [*tiny_overrides, *FACES_SMALL, "logger=none", "callbacks=minimal"]
    # max_steps 5 is off the checkpoint cadence (2): the end of training is saved anyway.
    train(compose_cfg([*base, "trainer.max_steps=5"], out))
    first = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    train(compose_cfg([*base, "trainer.max_steps=7"], out))
    second = torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)
    assert (first["global_step"], second["global_step"]) == (5, 7)
    adam = [float(s["step"]) for s in second["optimizer_states"][0]["state"].values()]
    assert set(adam) == {7.0}

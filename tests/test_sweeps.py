"""Sweeps: the sweep and launcher configs compose into the jobs they promise, a 2 × 2
multirun leaves four complete run directories, and icm-compare reads them back exactly."""

from __future__ import annotations

import csv
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf
from tiny_configs import DIAG_NO_FIGURES, FACES_SMALL

from icm.callbacks.records import append_record, read_records
from icm.cli import CONF_DIR
from icm.cli.common import SWEEPS_SEARCHPATH, expand_sweep
from icm.cli.compare import main as compare_main
from icm.config import validate
from icm.report.compare import (
    CompareError,
    compare,
    group_curve,
    load_jobs,
    summary,
    swept_keys,
)

SWEEPS_DIR = CONF_DIR.parent / "sweeps"


def compose_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=[SWEEPS_SEARCHPATH, *overrides],
                       return_hydra_config=True)


def sweep_jobs(name: str, extra: list[str] = ()) -> list[list[str]]:
    """The override lists of every job the basic sweeper makes from sweeps/<name>.yaml."""
    cfg = compose_cfg([f"+sweeps={name}", *extra])
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return expand_sweep([f"+sweeps={name}", *extra, *(f"{k}={v}" for k, v in params.items())])


def job_cfg(overrides: list[str]):
    cfg = compose_cfg(overrides)
    validate(cfg)
    return cfg


# --------------------------------------------------------------------------- configs
def test_every_sweep_file_names_its_command_and_composes():
    names = sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml"))
    assert names == ["fig6f_sdr_reg", "model_data", "stretch_factor_level"]
    for name in names:
        text = (SWEEPS_DIR / f"{name}.yaml").read_text()
        assert f"icm-train -m +sweeps={name}" in text
        assert "sweeps/scale=paper" in text
        cfg = compose_cfg([f"+sweeps={name}"])
        assert cfg.task_name == name
        assert Path(cfg.hydra.sweep.dir).name.startswith(f"{name}_")


def test_fig6f_sweep_is_regularizer_by_seed_at_cpu_scale():
    jobs = sweep_jobs("fig6f_sdr_reg")
    assert len(jobs) == 6
    seen = set()
    for overrides in jobs:
        cfg = job_cfg(overrides)
        assert cfg.model._target_ == "icm.lit.BetaVAE"
        assert cfg.data.datamodule.dataset._target_ == "icm.data.SyntheticFaces"
        assert cfg.trainer.max_steps == 120
        assert "fine" in cfg.intervention.levels
        if cfg.regularizer.mode == "alternate":
            assert set(cfg.regularizer.levels) == {"image", "fine", "intermediate"}
        seen.add((str(cfg.regularizer.mode), int(cfg.seed)))
    assert seen == {(m, s) for m in ("none", "alternate") for s in (0, 1, 2)}


def test_model_data_and_stretch_factor_sweeps_make_their_jobs():
    seen = set()
    for overrides in sweep_jobs("model_data"):
        cfg = job_cfg(overrides)
        # image channels follow the data: RGB faces, grayscale lfw
        assert cfg.model.image_channels == cfg.data.channels
        seen.add((cfg.model._target_, cfg.data.datamodule.dataset._target_))
    assert seen == {(m, d) for m in ("icm.lit.BetaVAE", "icm.lit.DCGAN")
                    for d in ("icm.data.SyntheticFaces", "icm.data.LFWFaces")}
    factors = set()
    for overrides in sweep_jobs("stretch_factor_level"):
        cfg = job_cfg(overrides)
        assert list(cfg.intervention.levels) == ["coarse", "intermediate", "fine", "image"]
        assert cfg.callbacks.diagnostics.factor == cfg.intervention.factor
        factors.add(float(cfg.intervention.factor))
    assert factors == {1.25, 1.5, 2.0}


def test_one_override_scales_a_sweep_up():
    small = job_cfg(sweep_jobs("fig6f_sdr_reg")[0])
    big = job_cfg(sweep_jobs("fig6f_sdr_reg", ["sweeps/scale=paper"])[0])
    assert small.trainer.max_steps < 1000 and big.trainer.max_steps == 50000
    # diagnostics cadence scales with the run: the same order of magnitude of points
    for cfg in (small, big):
        points = cfg.trainer.max_steps // cfg.callbacks.diagnostics.every_n_steps
        assert 5 <= points <= 100


def test_joblib_launcher_config():
    cfg = compose_cfg(["hydra/launcher=joblib_cpu"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("JoblibLauncher")
    assert launcher.n_jobs == 2 and launcher.backend is None  # loky processes


def sbatch_text(overrides: list[str], tmp_path: Path, monkeypatch) -> str:
    """The sbatch script submitit would submit for the SLURM launcher config."""
    submitit = pytest.importorskip("submitit")
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake = tmp_path / "bin"
    fake.mkdir(parents=True)
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit only checks that it exists
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    cfg = compose_cfg(["hydra/launcher=slurm", *overrides])
    params = OmegaConf.to_container(cfg.hydra.launcher, resolve=True)
    params.pop("_target_")
    params.pop("submitit_folder")
    # the same split of parameters as hydra_submitit_launcher's BaseSubmititLauncher.launch
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v
                                  for k, v in params.items()})
    return executor._executor._make_submission_file_text("python -m icm.train", "uid")


def test_slurm_launcher_matches_ddp_trainer_and_requeues(tmp_path, monkeypatch):
    from lightning_fabric.plugins.environments import SLURMEnvironment

    # the signal Lightning's SLURM auto-requeue listens to
    assert SLURMEnvironment().requeue_signal.name == "SIGUSR1"
    text = sbatch_text(["trainer=ddp", "hydra.launcher.partition=gpu"], tmp_path, monkeypatch)
    lines = set(text.splitlines())
    cfg = compose_cfg(["trainer=ddp"])
    devices = cfg.trainer.devices
    assert devices == 2
    assert f"#SBATCH --ntasks-per-node={devices}" in lines
    assert f"#SBATCH --gpus-per-node={devices}" in lines
    assert f"#SBATCH --nodes={cfg.trainer.num_nodes}" in lines
    assert "#SBATCH --partition=gpu" in lines
    assert "#SBATCH --requeue" in lines
    assert "#SBATCH --signal=USR1@120" in lines
    assert "#SBATCH --time=240" in lines

    single = sbatch_text(["trainer=gpu"], tmp_path / "single", monkeypatch)
    assert "#SBATCH --ntasks-per-node=1" in single and "#SBATCH --nodes=1" in single
    assert "--partition" not in single  # the cluster's default


# --------------------------------------------------------------------------- compare
def make_job(root: Path, num: int, overrides: list[str], records: list[dict],
             status: str = "completed", ckpt: bool = True, max_steps: int = 4) -> Path:
    job = root / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    seed = next((int(o.split("=")[1]) for o in overrides if o.startswith("seed=")), 0)
    (job / ".hydra" / "config.yaml").write_text(
        yaml.safe_dump({"seed": seed, "trainer": {"max_steps": max_steps}}))
    (job / "run.json").write_text(json.dumps({"status": status}))
    if ckpt:
        (job / "checkpoints").mkdir()
        (job / "checkpoints" / "last.ckpt").write_bytes(b"x")
    for record in records:
        append_record(job / "diagnostics.jsonl", record)
    return job


def record(step: int, fine: float, sdr: float) -> dict:
    return {"step": step, "sdr": {"decoder.fine": {"mean": sdr, "std": fine / 2,
                                                   "median": sdr + fine}},
            "stretch": {"fine": {"mse": fine}, "coarse": {"mse": 2 * fine}}}


def test_compare_groups_by_all_swept_keys_but_seed(tmp_path):
    rng = np.random.default_rng(0)
    values = {}
    num = 0
    for reg in ("none", "sdr"):
        for seed in (0, 1, 2):
            fine = rng.uniform(0.1, 1.0, size=3)
            values[(reg, seed)] = fine
            make_job(tmp_path, num, ["+sweeps=x", f"regularizer={reg}", f"seed={seed}",
                                     "trainer.max_steps=4"],
                     [record(s, f, 1.0 + f) for s, f in zip((2, 4, 6), fine, strict=True)])
            num += 1
    jobs = load_jobs(tmp_path)
    assert swept_keys(jobs) == ["regularizer", "seed"]  # +sweeps and max_steps are shared
    result = compare(tmp_path, level="fine")
    assert result.group_by == ["regularizer"]
    by_group = {row["group"]: row for row in result.summary}
    for reg in ("none", "sdr"):
        finals = np.array([values[(reg, s)][-1] for s in (0, 1, 2)])
        row = by_group[f"regularizer={reg}"]
        assert row["runs"] == row["complete"] == 3 and row["final_step"] == [6]
        assert math.isclose(row["stretch/fine/mse/mean"], finals.mean(), rel_tol=1e-12)
        assert math.isclose(row["stretch/fine/mse/std"], finals.std(ddof=1), rel_tol=1e-12)
        assert math.isclose(row["sdr/decoder.fine/mean/mean"], 1 + finals.mean(), rel_tol=1e-12)
        curve = group_curve([j for j in jobs if j.overrides["regularizer"] == reg],
                            "stretch/fine/mse")
        stacked = np.stack([values[(reg, s)] for s in (0, 1, 2)])
        assert list(curve.steps) == [2, 4, 6]
        np.testing.assert_allclose(curve.mean, stacked.mean(0), rtol=1e-12)
        np.testing.assert_allclose(curve.low, stacked.min(0), rtol=0)
        np.testing.assert_allclose(curve.high, stacked.max(0), rtol=0)
    # SDR spread table: std and |median - 1| at the last evaluation, mean over seeds.
    for reg in ("none", "sdr"):
        finals = np.array([values[(reg, s)][-1] for s in (0, 1, 2)])
        line = next(ln for ln in result.text.splitlines()
                    if ln.startswith(f"regularizer={reg}") and "decoder" in ln)
        assert f"{(finals / 2).mean():.3f}, {(2 * finals).mean():.3f}" in line
    assert {p.name for p in result.figures} == {"compare_stretch_fine_mse.png",
                                                "compare_sdr_decoder_fine_mean.png"}
    assert all(p.stat().st_size > 0 for p in result.figures)


def test_incomplete_jobs_are_included_and_flagged(tmp_path, capsys):
    make_job(tmp_path, 0, ["seed=0"], [record(2, 0.5, 1.0), record(4, 0.3, 1.1)])
    make_job(tmp_path, 1, ["seed=1"], [record(2, 0.7, 0.9)], status="running", ckpt=False)
    make_job(tmp_path, 2, ["seed=2"], [], status="failed")
    out = tmp_path / "report"
    compare_main([str(tmp_path), "--out", str(out)])
    text = capsys.readouterr().out
    assert "1/3" in text  # one of three runs complete
    assert "1: running" in text and "2: failed" in text
    with (out / "compare.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["job"], r["step"], r["status"]) for r in rows] == [
        ("0", "2", "completed"), ("0", "4", "completed"), ("1", "2", "running"),
        ("2", "", "failed")]
    jobs = load_jobs(tmp_path)
    curve = group_curve(jobs, "stretch/fine/mse")
    assert list(curve.count) == [2, 1]  # step 4 only from the job that got there
    assert curve.mean[0] == pytest.approx(0.6) and curve.mean[1] == pytest.approx(0.3)
    final = summary({"all": jobs}, ["stretch/fine/mse"])[0]
    assert final["final_step"] == [2, 4] and final["stretch/fine/mse/n"] == 2


def test_jobs_sort_by_number_and_nested_job_dirs_are_found(tmp_path):
    for num in (10, 9, 1):
        make_job(tmp_path, num, [f"seed={num}"], [record(1, 0.1, 1.0)])
    make_job(tmp_path / "extra", 0, ["seed=11"], [record(1, 0.1, 1.0)])
    (tmp_path / ".submitit" / "1" / ".hydra").mkdir(parents=True)  # launcher files: no job
    (tmp_path / ".submitit" / "1" / ".hydra" / "overrides.yaml").write_text("[]")
    assert [j.name for j in load_jobs(tmp_path)] == ["1", "9", "10", "extra/0"]


def test_folder_without_jobs_is_a_one_line_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        compare_main([str(tmp_path / "empty")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no job directories" in err[0] and "empty" in err[0]
    with pytest.raises(CompareError, match="not a directory"):
        compare(tmp_path / "missing")
    with pytest.raises(CompareError, match="level"):
        compare(tmp_path, level="eyes")


# --------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_two_by_two_multirun_then_compare(tmp_path, tiny_overrides):
    sweep_dir = tmp_path / "multirun"
    args = [*tiny_overrides, *FACES_SMALL, *DIAG_NO_FIGURES, "logger=csv", "regularizer=none,sdr",
            "seed=0,1", f"hydra.sweep.dir={sweep_dir}"]
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    run = subprocess.run([sys.executable, "-m", "icm.train", "-m", *args], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]

    job_dirs = sorted(p for p in sweep_dir.iterdir() if (p / ".hydra").is_dir())
    assert [p.name for p in job_dirs] == ["0", "1", "2", "3"]
    expected_rows = []
    for job in job_dirs:
        assert json.loads((job / "run.json").read_text())["status"] == "completed"
        ckpt = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)
        assert ckpt["global_step"] == 4
        records = read_records(job / "diagnostics.jsonl")
        assert [r["step"] for r in records] == [2, 4]
        overrides = dict(o.split("=", 1) for o in
                         yaml.safe_load((job / ".hydra" / "overrides.yaml").read_text()))
        expected_rows += [(job.name, overrides["regularizer"], overrides["seed"], r)
                          for r in records]

    out = tmp_path / "report"
    icm_compare = Path(sys.executable).with_name("icm-compare")  # the console script
    result = subprocess.run([str(icm_compare), str(sweep_dir), "--level", "fine",
                             "--out", str(out)], env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "regularizer=none" in result.stdout and "regularizer=sdr" in result.stdout
    assert (out / "compare_stretch_fine_mse.png").stat().st_size > 0
    with (out / "compare.csv").open() as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames, list(reader)
    assert columns[:5] == ["job", "regularizer", "seed", "step", "status"]
    levels = ["coarse", "intermediate", "fine", "image"]
    assert [c for c in columns if c.startswith("stretch/")] == [
        f"stretch/{level}/mse" for level in levels]
    assert {f"sdr/{net}.{level}/{stat}" for net in ("decoder", "encoder") for level in levels
            for stat in ("mean", "std", "median")} == {c for c in columns if c.startswith("sdr/")}
    assert len(rows) == len(expected_rows) == 8
    for row, (job, reg, seed, rec) in zip(rows, expected_rows, strict=True):
        assert (row["job"], row["regularizer"], row["seed"]) == (job, reg, seed)
        assert int(row["step"]) == rec["step"] and row["status"] == "completed"
        for column in columns[5:]:
            kind, key, stat = column.split("/")
            assert float(row[column]) == rec[kind][key][stat]  # exact: repr round-trips


"""`icm-analyze ckpt=<path>`: load a checkpoint safely and write report.html, analysis.json
and figures/ into the Hydra run directory (conf/analyze.yaml)."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from icm.cli import CONF_DIR
from icm.cli.common import UsageError, run_cli

log = logging.getLogger("icm.analyze")
PROG = "icm-analyze"


def validate(cfg: DictConfig) -> None:
    """Checks before Hydra creates a run directory: settings (:func:`check_config`) and a
    checkpoint that loads."""
    from icm.lit.checkpoint import CheckpointError, load_module
    from icm.report.analysis import check_config

    try:
        check_config(cfg)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if OmegaConf.is_missing(cfg, "ckpt"):
        raise UsageError("ckpt: missing; give ckpt=<path to a checkpoint written by icm-train>")
    try:
        load_module(cfg.ckpt, expect=cfg.get("expect"))
    except (CheckpointError, ValueError) as exc:
        raise UsageError(str(exc)) from None
    if str(cfg.get("device", "cpu")) not in ("cpu", "cuda"):
        raise UsageError(f"device must be cpu or cuda, got {cfg.device!r}")


def analyze(cfg: DictConfig, out_dir: str | Path | None = None) -> dict[str, Any]:
    """Load ``cfg.ckpt`` (:func:`icm.lit.checkpoint.load_module`), run
    :func:`icm.report.analysis.run_analysis` and write ``report.html``; returns the results.
    ``out_dir`` defaults to the Hydra run directory."""
    from icm.lit.checkpoint import load_module
    from icm.report.analysis import run_analysis
    from icm.report.html import write_report

    if out_dir is None:
        from hydra.core.hydra_config import HydraConfig

        out_dir = HydraConfig.get().runtime.output_dir
    if cfg.get("wandb"):
        os.environ.setdefault("WANDB_MODE", "offline")
        os.environ.setdefault("WANDB_SILENT", "true")
    module = load_module(cfg.ckpt, expect=cfg.get("expect")).to(str(cfg.get("device", "cpu")))
    result = run_analysis(module, cfg, out_dir)
    report = write_report(result, out_dir)
    log.info("report written to %s", report)
    return result


# An absolute config path: a relative one resolves as a Python package for the console script.
@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="analyze")
def _hydra_main(cfg: DictConfig) -> None:
    from icm.lit.checkpoint import CheckpointError

    try:
        analyze(cfg)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {str(exc).splitlines()[0] if str(exc) else exc}", file=sys.stderr)
        sys.exit(1)


def main(argv: list[str] | None = None) -> None:
    """Console entry point ``icm-analyze``."""
    run_cli(PROG, _hydra_main, "analyze", validate=validate, argv=argv)


if __name__ == "__main__":
    main()

"""`icm-train`: train the β-VAE or the DCGAN from the Hydra config tree in conf/."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig

from icm.cli import CONF_DIR
from icm.cli.common import run_cli
from icm.config import ConfigError, validate
from icm.run import update_status

log = logging.getLogger("icm.train")


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def _hydra_main(cfg: DictConfig) -> float | None:
    from icm.train import train

    try:
        metrics = train(cfg)
    except (ConfigError, FileNotFoundError, FloatingPointError) as exc:
        update_status(cfg.paths.output_dir, status="failed", reason=str(exc))
        print(f"icm-train: error: {exc}", file=sys.stderr)
        sys.exit(1)
    return metrics.get("val/loss", metrics.get("train/loss"))


def main(argv: list[str] | None = None) -> None:
    run_cli("icm-train", _hydra_main, "config", validate=validate, argv=argv)


if __name__ == "__main__":
    main()

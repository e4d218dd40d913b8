"""Command-line entry points (Hydra): icm-train, icm-toy, icm-analyze, icm-compare."""

from pathlib import Path

# conf/ lives beside the package in the repository (editable install, see README).
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"

"""What every Hydra entry point shares: argument checks before Hydra starts, resume of a
run directory in place, and one-line errors."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from icm.cli import CONF_DIR
from icm.run import LAST_CKPT

# Hydra flags that take a value.
_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd",
                "--experimental-rerun", "--info", "-i", "--cfg", "-c", "--package", "-p"}
MAX_PRECHECKED_JOBS = 256
# The repository root on Hydra's search path makes sweeps/*.yaml a config group:
# `icm-train -m +sweeps=<name>`.
SWEEPS_SEARCHPATH = f"hydra.searchpath=[file://{CONF_DIR.parent}]"


class UsageError(ValueError):
    """Bad command-line input; the message is one line."""


def fail(prog: str, message: str, code: int = 2) -> None:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(code)


def split_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """Split argv into Hydra flags (kept as they are) and key=value overrides."""
    flags, overrides = [], []
    it = iter(argv)
    for arg in it:
        if arg.startswith("-"):
            flags.append(arg)
            if arg in _VALUE_FLAGS and "=" not in arg:
                nxt = next(it, None)
                if nxt is not None:
                    flags.append(nxt)
        else:
            overrides.append(arg)
    return flags, overrides


def override_key(override: str) -> str:
    return override.split("=", 1)[0].lstrip("+~")


def merge_overrides(old: list[str], new: list[str]) -> list[str]:
    """Old overrides with every key that `new` sets replaced; order kept, new ones last."""
    new_keys = {override_key(o) for o in new}
    return [o for o in old if override_key(o) not in new_keys] + list(new)


def resume_overrides(run_dir: str, new: list[str]) -> list[str]:
    """Overrides that re-create the job of `run_dir` in place, from its last checkpoint."""
    path = Path(run_dir)
    saved = path / ".hydra" / "overrides.yaml"
    if not saved.is_file():
        raise UsageError(f"resume={run_dir}: not a run directory (no .hydra/overrides.yaml)")
    ckpt = path / LAST_CKPT
    if not ckpt.is_file():
        raise UsageError(f"resume={run_dir}: no checkpoint to resume from ({ckpt} is missing)")
    old = yaml.safe_load(saved.read_text()) or []
    old = [o for o in old if override_key(o) not in {"hydra.run.dir", "ckpt_path"}]
    return merge_overrides(old, new) + [
        f"hydra.run.dir={path.resolve()}",
        f"ckpt_path={ckpt.resolve()}",
    ]


def expand_sweep(overrides: list[str]) -> list[list[str]]:
    """Every job of a basic-sweeper multirun as a plain override list (cartesian product)."""
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
        else:
            values = [o.get_value_element_as_str()]
        prefix = {"ADD": "+", "DEL": "~", "FORCE_ADD": "++"}.get(o.type.name, "")
        choices.append([f"{prefix}{o.key_or_group}={v}" for v in values])
    return [list(job) for job in itertools.product(*choices)]


def precheck(config_name: str, overrides: list[str], multirun: bool,
             validate: Callable[[DictConfig], None] | None) -> None:
    """Compose (and validate) every job before Hydra creates any run directory."""
    try:
        jobs = expand_sweep(overrides) if multirun else [overrides]
    except HydraException as exc:
        raise UsageError(str(exc).strip().splitlines()[0]) from None
    for job in jobs[:MAX_PRECHECKED_JOBS]:
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name=config_name, overrides=job, return_hydra_config=True)
        except (HydraException, OmegaConfBaseException) as exc:
            raise UsageError(_compose_message(exc)) from None
        if validate is not None:
            validate(cfg)
            if multirun:
                from icm.config import validate_multirun_job

                validate_multirun_job(cfg)


def _compose_message(exc: Exception) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    text = lines[0] if lines else type(exc).__name__
    options: list[str] = []
    for ln in lines[1:]:
        if ln.startswith("Config search path"):
            break
        if not ln.endswith(":") and not ln.startswith("In '"):
            options.append(ln)
    if "Could not find" in text and options:
        text += f"; allowed: {', '.join(options)}"
    elif text.startswith("Could not override"):
        text += " No such key" + "".join(
            f"; {ln[0].lower()}{ln[1:]}" for ln in lines[1:] if ln.startswith("To append"))
    return text


def run_cli(prog: str, hydra_main: Callable[[], None], config_name: str,
            validate: Callable[[DictConfig], None] | None = None,
            argv: list[str] | None = None) -> None:
    """Check the command line, handle `resume=<run dir>`, then hand over to Hydra."""
    from icm.config import ConfigError

    argv = list(sys.argv[1:] if argv is None else argv)
    flags, overrides = split_args(argv)
    multirun = "-m" in flags or "--multirun" in flags
    info_only = any(f in flags for f in ("--help", "-h", "--hydra-help", "--info", "-i",
                                         "--cfg", "-c", "--shell-completion", "-sc"))
    if not any(override_key(o) == "hydra.searchpath" for o in overrides):
        overrides.append(SWEEPS_SEARCHPATH)
    try:
        resume = [o for o in overrides if override_key(o) == "resume"]
        if resume:
            overrides = [o for o in overrides if override_key(o) != "resume"]
            overrides = resume_overrides(resume[-1].split("=", 1)[1], overrides)
        if not info_only and "--config-path" not in flags and "-cp" not in flags:
            precheck(config_name, overrides, multirun, validate)
    except (UsageError, ConfigError) as exc:
        fail(prog, str(exc))
    sys.argv = [sys.argv[0] if sys.argv else prog, *flags, *overrides]
    hydra_main()

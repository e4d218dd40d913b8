"""Benchmarks 3, 4 and 5: default callbacks against none in a real `pl.Trainer` fit, the
Lightning loop against a bare PyTorch loop, and synthetic-face rendering against the step it
feeds."""

from __future__ import annotations

import cProfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.callbacks import Checkpoint
from torch.utils.data import default_collate

from benchmarks.timing import interleaved, median, now, python_profile_rows, spread
from benchmarks.workloads import (
    Sizes,
    callback_cadences,
    make_callbacks,
    make_datamodule,
    make_model,
    result,
    train_step,
)
from icm.lit.common import images_from_batch

HOOKS: tuple[str, ...] = tuple(name for name in dir(pl.Callback) if name.startswith("on_"))


class StepClock(pl.Callback):
    """Clock reading at the start of every training batch (after the batch is loaded)."""

    def __init__(self) -> None:
        self.starts: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.starts.append(now())


def window_mean(starts: list[float], warmup: int, window: int) -> float:
    """Mean seconds per step over steps ``warmup + 1 .. warmup + window`` from batch start
    times: from the start of the first to the start of the step after the last, so every
    step's own work, its callbacks and the loading of the next batch are counted."""
    if len(starts) < warmup + window + 1:
        raise ValueError(
            f"need {warmup + window + 1} batch starts for the window, got {len(starts)}"
        )
    return (starts[warmup + window] - starts[warmup]) / window


class HookTimer:
    """Times every ``on_*`` hook of some callbacks during a fit, by wrapping the bound methods
    of the instances; nested calls (a checkpoint save calling other callbacks' state hooks)
    count once, in the outermost hook. With ``profiler`` set, the hooks of training steps
    listed in ``profile_steps`` run under it."""

    def __init__(self, profiler: cProfile.Profile | None = None,
                 profile_steps: set[int] | None = None) -> None:
        self.calls: list[dict[str, Any]] = []  # callback, hook, step, start, seconds
        self.profiler = profiler
        self.profile_steps = profile_steps or set()
        self._depth = 0

    def attach(self, name: str, callback: pl.Callback) -> None:
        for hook in HOOKS:
            method = getattr(type(callback), hook, None)
            if method is None or method is getattr(pl.Callback, hook):
                continue  # not overridden: Lightning's no-op
            setattr(callback, hook, self._wrap(name, hook, getattr(callback, hook)))

    def _wrap(self, name: str, hook: str, bound: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            trainer = args[0] if args and isinstance(args[0], pl.Trainer) else None
            step = int(trainer.global_step) if trainer is not None else -1
            outer = self._depth == 0
            profiling = outer and self.profiler is not None and step in self.profile_steps
            self._depth += 1
            if profiling:
                self.profiler.enable()
            started = now()
            try:
                return bound(*args, **kwargs)
            finally:
                seconds = now() - started
                if profiling:
                    self.profiler.disable()
                self._depth -= 1
                if outer:
                    self.calls.append({"callback": name, "hook": hook, "step": step,
                                       "start": started, "seconds": seconds})

        return timed


def _trainer(steps: int, callbacks: list[pl.Callback], root: Path) -> pl.Trainer:
    """A CPU trainer without logger, progress bar, model summary or validation."""
    return pl.Trainer(
        accelerator="cpu",
        devices=1,
        max_steps=steps,
        max_epochs=-1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=any(isinstance(c, Checkpoint) for c in callbacks),
        callbacks=callbacks,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        default_root_dir=str(root),
    )


def lightning_fit(cfg: DictConfig, sizes: Sizes, callbacks: list[pl.Callback],
                  root: Path) -> tuple[float, StepClock]:
    """Fit the configured model for warmup + window + 1 steps; mean seconds per window step."""
    model = make_model(cfg)
    datamodule = instantiate(cfg.data.datamodule)
    clock = StepClock()
    trainer = _trainer(sizes.fit_warmup + sizes.fit_window + 1, [clock, *callbacks], root)
    torch.manual_seed(0)
    trainer.fit(model, datamodule=datamodule)
    return window_mean(clock.starts, sizes.fit_warmup, sizes.fit_window), clock


def bare_fit(cfg: DictConfig, sizes: Sizes) -> float:
    """The same model, data loader and optimizer in a plain loop (forward, loss, backward,
    step); mean seconds per window step, timed like :func:`lightning_fit`."""
    model = make_model(cfg)
    optimizer = model.configure_optimizers()
    loader = make_datamodule(cfg).train_dataloader()
    model.train()
    torch.manual_seed(0)
    starts: list[float] = []
    needed = sizes.fit_warmup + sizes.fit_window + 1
    while len(starts) < needed:
        for batch in loader:
            starts.append(now())
            if len(starts) == needed:
                break
            train_step(model, optimizer, images_from_batch(batch))
    return window_mean(starts, sizes.fit_warmup, sizes.fit_window)


def _scaled(cfg: DictConfig, cadence: int, output_dir: Path) -> DictConfig:
    """Copy of ``cfg`` with every callback's cadence set to ``cadence``, writing to
    ``output_dir``."""
    scaled = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False))
    scaled.paths.output_dir = str(output_dir)
    for name, node in (scaled.get("callbacks") or {}).items():
        for key in ("every_n_steps", "every_n_train_steps"):
            if node is not None and node.get(key) is not None:
                scaled.callbacks[name][key] = cadence
    return scaled


def _callback_costs(timer: HookTimer, clock: StepClock, sizes: Sizes) -> dict[str, Any]:
    """From the hook calls inside one fit's timed window: the window's wall time, the time
    spent in callback hooks, and per callback the seconds per evaluation (calls at steps that
    are multiples of the scaled cadence) and per step of its other calls."""
    begin = clock.starts[sizes.fit_warmup]
    end = clock.starts[sizes.fit_warmup + sizes.fit_window]
    costs: dict[str, dict[str, Any]] = {}
    hooks = 0.0
    for call in timer.calls:
        if not begin <= call["start"] < end:
            continue
        hooks += call["seconds"]
        entry = costs.setdefault(call["callback"], {"eval_s": 0.0, "events": set(), "other_s": 0.0})
        if call["step"] > 0 and call["step"] % sizes.fit_cadence == 0 and call["hook"] in (
            "on_train_batch_end", "on_validation_end", "on_train_epoch_end"
        ):
            entry["eval_s"] += call["seconds"]
            entry["events"].add(call["step"])
        else:
            entry["other_s"] += call["seconds"]
    return {
        "window_s": end - begin,
        "hooks_s": hooks,
        "callbacks": {
            name: {
                "events": len(c["events"]),
                "seconds_per_event": c["eval_s"] / max(1, len(c["events"])),
                "seconds_per_step_otherwise": c["other_s"] / sizes.fit_window,
            }
            for name, c in costs.items()
        },
    }


def training_overheads(cfg: DictConfig, sizes: Sizes,
                       profile: bool = False) -> tuple[dict[str, Any], dict[str, Any]]:
    """Benchmarks 3 and 4 from one interleaved set of fits: a bare loop, Lightning without
    callbacks, and Lightning with the default callbacks at a scaled cadence. Run directories
    (checkpoints, figures) go to a temporary folder, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="icm-bench-fit-") as scratch:
        return _training_overheads(cfg, sizes, profile, Path(scratch))


def _training_overheads(cfg: DictConfig, sizes: Sizes, profile: bool,
                        scratch: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    defaults = callback_cadences(cfg)
    costs_per_fit: list[dict[str, dict]] = []
    counter = iter(range(10**6))

    def with_callbacks() -> float:
        run_dir = scratch / f"callbacks{next(counter)}"
        scaled = _scaled(cfg, sizes.fit_cadence, run_dir)
        callbacks = make_callbacks(scaled)
        timer = HookTimer()
        for name, callback in callbacks.items():
            timer.attach(name, callback)
        seconds, clock = lightning_fit(scaled, sizes, list(callbacks.values()), run_dir)
        costs_per_fit.append(_callback_costs(timer, clock, sizes))
        return seconds

    def without_callbacks() -> float:
        return lightning_fit(cfg, sizes, [], scratch / f"plain{next(counter)}")[0]

    times = interleaved(
        {"bare": lambda: bare_fit(cfg, sizes), "lightning": without_callbacks,
         "callbacks": with_callbacks},
        sizes.fit_repeats,
        warmup=0,
        self_timed=True,
    )
    t_bare, t_plain, t_cb = (median(times[k]) for k in ("bare", "lightning", "callbacks"))

    # Each callbacks fit is its own reference: its training steps without the hook time set
    # the step cost, so a change of the machine's load between fits cancels out.
    step_in_fit = [(f["window_s"] - f["hooks_s"]) / sizes.fit_window for f in costs_per_fit]
    in_fit_scaled = median([f["hooks_s"] / (f["window_s"] - f["hooks_s"]) for f in costs_per_fit])
    names = sorted({name for f in costs_per_fit for name in f["callbacks"]})

    def amortized_at(cadence_of: Callable[[str], int | None]) -> list[float]:
        """Per fit: Σ over callbacks (cost per evaluation / cadence + other per-step cost) /
        step cost of that fit."""
        totals = []
        for fit, step in zip(costs_per_fit, step_in_fit, strict=True):
            total = 0.0
            for name, c in fit["callbacks"].items():
                cadence = cadence_of(name)
                per_event = c["seconds_per_event"] / cadence if cadence else 0.0
                total += (per_event + c["seconds_per_step_otherwise"]) / step
            totals.append(total)
        return totals

    amortized = median(amortized_at(defaults.get))
    step_ref = median(step_in_fit)
    per_callback = {}
    for name in names:
        fits = [f["callbacks"][name] for f in costs_per_fit if name in f["callbacks"]]
        per_event = median([c["seconds_per_event"] for c in fits])
        per_step = median([c["seconds_per_step_otherwise"] for c in fits])
        cadence = defaults.get(name)
        per_callback[name] = {
            "default_cadence": cadence,
            "seconds_per_event": round(per_event, 4),
            "seconds_per_step_otherwise": round(per_step, 6),
            "default_overhead": None if not cadence
            else round((per_event / cadence + per_step) / step_ref, 5),
        }
    direct_scaled = t_cb / t_plain - 1.0
    run_steps = sizes.fit_warmup + sizes.fit_window + 1
    overhead = result(
        3, "callbacks_overhead", "Default callbacks at default cadence: training overhead",
        amortized, "%", 0.05, "<=",
        f"Real `pl.Trainer` fits of the configured β-VAE on synthetic faces (batch "
        f"{sizes.batch}, no logger, no validation), {run_steps} steps each, the last "
        f"{sizes.fit_window} timed; the default callbacks (conf/callbacks/default.yaml) run "
        f"at a cadence scaled to {sizes.fit_cadence} steps so that {sizes.fit_events} "
        "evaluations fall in the window; every callback hook call is timed. Overhead at "
        "the default cadence = Σ over callbacks (cost per evaluation / default cadence + "
        "cost on other steps) / training step cost, both from the same fit (window time "
        "minus hook time), median over fits. Cross-check in details: the direct overhead at "
        "the scaled cadence, step time with callbacks / without (separate fits), against "
        f"the hook time share; medians of {sizes.fit_repeats} interleaved fits.",
        {
            "step_ms_without_callbacks": round(t_plain * 1e3, 2),
            "step_ms_with_callbacks_scaled": round(t_cb * 1e3, 2),
            "step_ms_in_callback_fits": round(step_ref * 1e3, 2),
            "scaled_cadence": sizes.fit_cadence,
            "direct_overhead_at_scaled_cadence": round(direct_scaled, 4),
            "hook_overhead_at_scaled_cadence": round(in_fit_scaled, 4),
            "callbacks": per_callback,
            "spread": {k: round(spread(v), 3) for k, v in times.items()},
        },
    )
    ratio = result(
        4, "lightning_vs_bare", "Lightning loop throughput / bare PyTorch loop",
        t_bare / t_plain, "", 0.9, ">=",
        "Same model, data loader and optimizer; bare loop = forward, loss, backward, step; "
        "Lightning `Trainer.fit` with logger, progress bar, checkpointing and validation off "
        f"and no callbacks; mean step time over the same {sizes.fit_window}-step window, "
        f"medians of {sizes.fit_repeats} interleaved runs.",
        {
            "step_ms_bare": round(t_bare * 1e3, 2),
            "step_ms_lightning": round(t_plain * 1e3, 2),
            "spread": {k: round(spread(times[k]), 3) for k in ("bare", "lightning")},
        },
    )
    if profile or not overhead["met"]:
        profiler = cProfile.Profile()
        run_dir = scratch / "profiled"
        scaled = _scaled(cfg, sizes.fit_cadence, run_dir)
        callbacks = make_callbacks(scaled)
        steps = {sizes.fit_cadence * k for k in range(2, sizes.fit_events + 2)}
        timer = HookTimer(profiler, steps)
        for name, callback in callbacks.items():
            timer.attach(name, callback)
        lightning_fit(scaled, sizes, list(callbacks.values()), run_dir)
        overhead["profile"] = python_profile_rows(profiler, 12)
    if profile or not ratio["met"]:
        profiler = cProfile.Profile()
        profiler.enable()
        try:
            lightning_fit(cfg, sizes, [], scratch / "profiled-plain")
        finally:
            profiler.disable()
        ratio["profile"] = python_profile_rows(profiler, 12, sort="self")
    return overhead, ratio


def faces_fraction(cfg: DictConfig, sizes: Sizes, profile: bool = False) -> dict[str, Any]:
    """Benchmark 5: rendering one batch of synthetic faces as the data loader does
    (``__getitems__`` + collate) against the training step it feeds."""
    dataset = instantiate(cfg.data.datamodule.dataset)
    model = make_model(cfg)
    optimizer = model.configure_optimizers()
    generator = torch.Generator().manual_seed(0)
    batch = {"x": default_collate(dataset.__getitems__(list(range(sizes.batch))))}

    def render() -> None:
        indices = torch.randint(len(dataset), (sizes.batch,), generator=generator).tolist()
        batch["x"] = default_collate(dataset.__getitems__(indices))

    times = interleaved(
        {"render": render, "step": lambda: train_step(model, optimizer, batch["x"])},
        sizes.repeats,
        warmup=1,
    )
    t_render, t_step = median(times["render"]), median(times["step"])
    record = result(
        5, "faces_fraction", "Synthetic faces: one batch rendered / the training step it feeds",
        t_render / t_step, "", 0.1, "<=",
        f"{type(dataset).__name__} at {dataset.image_size}×{dataset.image_size}, "
        f"{sizes.batch} random indices per batch through `__getitems__` and the default "
        f"collate (the DataLoader's path, no workers) vs a bare β-VAE step on that batch; "
        f"medians of {sizes.repeats} interleaved rounds.",
        {
            "render_ms": round(t_render * 1e3, 2),
            "step_ms": round(t_step * 1e3, 2),
            "images_per_second": round(sizes.batch / t_render, 1),
            "spread": {k: round(spread(v), 3) for k, v in times.items()},
        },
    )
    if profile or not record["met"]:
        from benchmarks.timing import profile_torch

        record["profile"] = profile_torch(render)
    return record

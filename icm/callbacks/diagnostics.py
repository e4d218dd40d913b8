"""In-training diagnostics: SDR of every layer (sec. 5.1) and the stretch probe (sec. 5.2)
on a fixed probe, logged, appended to `diagnostics.jsonl` and drawn (Fig. 5, 6, 8, 9)."""

from __future__ import annotations

import math
import shutil
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from icm.callbacks.probe import (
    Periodic,
    is_active,
    log_scalars,
    preserved_rng,
    probe_images,
    probe_latents,
    to_module,
    wandb_log,
    wandb_loggers,
)
from icm.callbacks.records import append_record, read_records, truncate_records
from icm.layers import eval_mode, level_names, record_causes, resolve_layer

RECORDS_FILE = "diagnostics.jsonl"
STAT_KEYS = ("mean", "std", "median", "mode")

# Measured default cadence (see conf/callbacks/default.yaml): one evaluation every this many
# training steps keeps the callback under 5% of the training wall time.
DEFAULT_EVERY_N_STEPS = 250


def _significant(values: torch.Tensor, digits: int = 6) -> list[float]:
    """Finite values as plain floats with ``digits`` significant digits (compact JSON)."""
    return [float(f"{v:.{digits}g}") for v in values.tolist()]


def _finite_or_none(value: Any) -> Any:
    """Plain JSON value: floats that are NaN/inf (e.g. std of one value) become None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Diagnostics(Periodic):
    """Spectral independence and extrapolation diagnostics during training (rank zero only).

    At fit start a fixed probe is drawn: ``probe_size`` latents from N(0, I) with
    ``torch.Generator(seed)`` and ``probe_size`` real images (the datamodule's
    ``probe_batch``, else the first validation batches, else the first training
    batches). Both live in this callback's ``state_dict``, so a resumed run probes the same
    inputs. Every ``every_n_steps`` global steps and once at the end of training (never twice
    for one step) it runs:

    - SDR (eq. 16, eq. 24 for strided layers, `icm.spectral.sdr`) of every level of every
      net in ``pl_module.nets``: the first (generator side) net gets the probe latents, the
      others the probe images; one eval-mode, no-grad forward pass per net records the
      causes. Logged as ``sdr/<net>.<level>/{mean,std,median,mode}`` (`sdr_stats`), plus a
      ``wandb.Histogram`` per layer when a WandbLogger is attached.
    - the stretch probe (sec. 5.2, `icm.interventions.stretch_probe`) on the first net with
      ``pl_module.generate``: ``factor`` along ``axis`` at each of ``levels`` (None: every
      level), Haar scales up to ``wavelet_levels``. Logged as ``stretch/<level>/mse`` and
      ``stretch/<level>/mse_scale<j>`` (j = 1 coarsest).

    Each evaluation appends one JSON line to ``<output_dir>/diagnostics.jsonl``::

        {"step": int, "epoch": int, "time": unix seconds, "seconds": evaluation cost,
         "sdr": {"<net>.<level>": {"mean", "std", "median", "mode", "n", "undefined",
                                   "values": [n finite SDR values, 6 significant digits]}},
         "stretch": {"<level>": {"mse", "energy_per_scale", "mse_per_scale",
                                 "approx_energy", "approx_mse"}}}

    (``mode``: centre of the fullest of ``histogram_bins`` bins; a statistic that is
    undefined, e.g. for a layer whose pairs are all undefined, is null) and, with ``figures``,
    redraws ``<output_dir>/figures/*_latest.png``: SDR histograms of all nets per level
    (Fig. 5/8), the stretched-sample grid (Fig. 6a/9a; a copy per step is kept as
    ``stretch_grid_step<step>.png``), per-scale MSE bars (Fig. 6c left) and stretch MSE
    over training (Fig. 6f). When training resumes, records after the restored global step
    are removed first, so the file holds each evaluation once.

    Evaluations run with the global RNG forked and every net's train/eval flags restored:
    with or without this callback, training follows the same trajectory.

    Cost: one evaluation is a fixed amount of work (two probe forwards for SDR, one
    batched forward per stretched level, four figures): about 1.2 s on 2 CPU threads for the
    Table 1 models, i.e. 1-2% of training at the default cadence of 250 steps. It does not
    shrink with faster steps (toy sizes, GPUs): raise ``every_n_steps`` there, or set
    ``figures=False`` (the figures are half the cost).
    """

    def __init__(
        self,
        output_dir: str | Path,
        every_n_steps: int = DEFAULT_EVERY_N_STEPS,
        probe_size: int = 64,
        seed: int = 0,
        sdr: bool = True,
        stretch: bool = True,
        factor: float = 1.5,
        axis: str = "width",
        levels: Sequence[str] | None = None,
        wavelet_levels: int | None = None,
        figures: bool = True,
        histogram_bins: int = 50,
        grid_columns: int = 8,
    ) -> None:
        super().__init__(every_n_steps)
        if int(probe_size) < 1:
            raise ValueError(f"probe_size: must be >= 1, got {probe_size}")
        if not float(factor) > 0:
            raise ValueError(f"intervention.factor: must be > 0, got {factor}")
        if axis not in ("width", "height"):
            raise ValueError(f"intervention.axis: must be 'width' or 'height', got {axis!r}")
        if int(histogram_bins) < 1:
            raise ValueError(f"histogram_bins: must be >= 1, got {histogram_bins}")
        if wavelet_levels is not None and int(wavelet_levels) < 1:
            raise ValueError(f"wavelet_levels: must be >= 1 or None, got {wavelet_levels}")
        self.output_dir = Path(output_dir)
        self.probe_size = int(probe_size)
        self.seed = int(seed)
        self.sdr = bool(sdr)
        self.stretch = bool(stretch)
        self.factor = float(factor)
        self.axis = axis
        self.levels = None if levels is None else [str(level) for level in levels]
        if self.stretch and self.levels is not None and not self.levels:
            raise ValueError(
                "intervention.levels: must name at least one level (or set stretch: false)"
            )
        self.wavelet_levels = None if wavelet_levels is None else int(wavelet_levels)
        self.figures = bool(figures)
        self.histogram_bins = int(histogram_bins)
        self.grid_columns = int(grid_columns)
        self.latents: torch.Tensor | None = None
        self.images: torch.Tensor | None = None
        self._history: list[dict[str, Any]] = []  # step + stretch scores, for Fig. 6f
        self._warned: set[str] = set()

    @property
    def records_path(self) -> Path:
        return self.output_dir / RECORDS_FILE

    @property
    def figures_dir(self) -> Path:
        return self.output_dir / "figures"

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        return {"latents": self.latents, "images": self.images, "seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.latents = state_dict.get("latents")
        self.images = state_dict.get("images")

    # ------------------------------------------------------------------ hooks
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not is_active(trainer):
            return
        if self.stretch and self.levels is not None:
            generator_name, generator = next(iter(pl_module.nets.items()))
            known = level_names(generator)
            unknown = [level for level in self.levels if level not in known]
            if unknown:
                raise ValueError(
                    f"intervention.levels: {unknown} not levels of {generator_name}; "
                    f"allowed: {known}"
                )
        latent_dim = int(pl_module.latent_dim)
        if self.latents is None or self.latents.shape != (self.probe_size, latent_dim):
            self.latents = probe_latents(self.probe_size, latent_dim, self.seed)
        if self.images is None:
            self.images = probe_images(trainer, self.probe_size)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The restored global step is known only here (Lightning restores loops after
        # on_fit_start): drop records a previous run wrote after its last checkpoint,
        # and a truncated last line, so every evaluation appears once.
        if not is_active(trainer):
            return
        if self.images is None:
            self.images = probe_images(trainer, self.probe_size, allow_train=True)
        step = int(trainer.global_step)
        truncate_records(self.records_path, max_step=step)
        self._history = [
            {"step": int(r["step"]), "stretch": r.get("stretch") or {}}
            for r in read_records(self.records_path)
        ]
        self._last_step = step if any(h["step"] == step for h in self._history) else None

    def run(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Any:
        return self.evaluate(trainer, pl_module)

    # ------------------------------------------------------------------ work
    def evaluate(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, Any]:
        """Run the diagnostics now, append the record, log and draw; return the record."""
        if self.latents is None:
            self.on_fit_start(trainer, pl_module)
        started = time.perf_counter()
        step = int(trainer.global_step)
        record: dict[str, Any] = {
            "step": step,
            "epoch": int(trainer.current_epoch),
            "time": time.time(),
        }
        rows: dict[str, torch.Tensor] | None = None
        with preserved_rng(pl_module.device):
            if self.sdr:
                record["sdr"] = self._sdr(pl_module)
            if self.stretch:
                record["stretch"], rows = self._stretch(pl_module)
        record["seconds"] = time.perf_counter() - started
        append_record(self.records_path, record)
        self._last_step = step
        self._history.append({"step": step, "stretch": record.get("stretch") or {}})
        self._log(trainer, record)
        if self.figures:
            self._draw(trainer, record, rows)
        return record

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned:
            self._warned.add(key)
            warnings.warn(message, stacklevel=3)

    def _sdr(self, pl_module: pl.LightningModule) -> dict[str, dict[str, Any]]:
        from icm.spectral import sdr, sdr_stats

        result: dict[str, dict[str, Any]] = {}
        for index, (name, net) in enumerate(pl_module.nets.items()):
            inputs = self.latents if index == 0 else self.images
            if inputs is None:
                self._warn_once(
                    f"no-images-{name}",
                    f"Diagnostics: no probe images (no datamodule.probe_batch and no "
                    f"dataloader), so no SDR for {name}",
                )
                continue
            levels = level_names(net)
            with eval_mode(net), record_causes(net, levels) as causes:
                net(to_module(inputs, net))
                for level in levels:
                    layer = resolve_layer(net, level)
                    key = f"{name}.{level}"
                    try:
                        values = sdr(layer, causes[level])
                    except ValueError as exc:
                        # Every pair undefined (all kernels or all maps zero): nothing to
                        # summarize; keep the layer in the record with its pair count.
                        self._warn_once(f"undefined-{key}", f"Diagnostics: SDR of {key}: {exc}")
                        undefined = int(layer.weight[:, :, 0, 0].numel())
                        result[key] = {k: None for k in STAT_KEYS}
                        result[key].update(n=0, undefined=undefined, values=[])
                        continue
                    stats = {
                        k: _finite_or_none(v)
                        for k, v in sdr_stats(values, bins=self.histogram_bins).items()
                    }
                    finite = values[torch.isfinite(values)].flatten().cpu()
                    stats["values"] = _significant(finite)
                    result[key] = stats
        return result

    def _stretch(
        self, pl_module: pl.LightningModule
    ) -> tuple[dict[str, dict[str, Any]], dict[str, torch.Tensor] | None]:
        from icm.interventions import stretch_probe

        generator = next(iter(pl_module.nets.values()))
        levels = self.levels if self.levels is not None else level_names(generator)
        count = self.grid_columns
        result = stretch_probe(
            generator,
            to_module(self.latents, generator),
            levels,
            factor=self.factor,
            axis=self.axis,
            wavelet_levels=self.wavelet_levels,
            generate=pl_module.generate,
            return_images=self.figures,
        )
        images = result.pop("images", None)
        rows = None if images is None else {k: v[:count].float().cpu() for k, v in images.items()}
        return result, rows

    def _log(self, trainer: pl.Trainer, record: dict[str, Any]) -> None:
        step = record["step"]
        metrics: dict[str, float] = {}
        for key, stats in (record.get("sdr") or {}).items():
            for stat in STAT_KEYS:
                metrics[f"sdr/{key}/{stat}"] = stats.get(stat)
        for level, scores in (record.get("stretch") or {}).items():
            metrics[f"stretch/{level}/mse"] = scores["mse"]
            for j, value in enumerate(scores.get("mse_per_scale", []), start=1):
                metrics[f"stretch/{level}/mse_scale{j}"] = value
        log_scalars(trainer, metrics, step)
        if record.get("sdr") and wandb_loggers(trainer):
            import wandb

            histograms = {
                f"sdr/{key}/hist": wandb.Histogram(
                    stats["values"], num_bins=min(self.histogram_bins, 512)
                )
                for key, stats in record["sdr"].items()
                if stats["values"]
            }
            wandb_log(trainer, histograms, step)

    def _draw(
        self,
        trainer: pl.Trainer,
        record: dict[str, Any],
        rows: dict[str, torch.Tensor] | None,
    ) -> None:
        from icm.report.figures import (
            save_figure,
            scale_bars,
            sdr_histograms,
            stretch_grid,
            stretch_mse_curves,
        )

        step = record["step"]
        written: dict[str, Path] = {}
        folder = self.figures_dir
        if record.get("sdr"):
            per_net: dict[str, dict[str, list[float]]] = {}
            for key, stats in record["sdr"].items():
                net, level = key.split(".", 1)
                per_net.setdefault(net, {})[level] = stats["values"]
            fig = sdr_histograms(per_net, bins=self.histogram_bins, title=f"SDR, step {step}")
            written["sdr_histograms"] = save_figure(fig, folder / "sdr_histograms_latest.png")
        if record.get("stretch"):
            stretch = record["stretch"]
            fig = scale_bars(
                {level: s["mse_per_scale"] for level, s in stretch.items()},
                title=f"stretch ×{self.factor:g} ({self.axis}), step {step}",
            )
            written["stretch_scales"] = save_figure(fig, folder / "stretch_scales_latest.png")
            fig = stretch_mse_curves(self._history, title="stretch MSE over training")
            written["stretch_mse"] = save_figure(fig, folder / "stretch_mse_latest.png")
        if rows:
            labels = list(rows)
            fig = stretch_grid(
                [rows[k] for k in labels],
                ["normal" if k == "normal" else "stretched image" if k == "stretched"
                 else f"{k} stretched" for k in labels],
                columns=self.grid_columns,
                title=f"step {step}",
            )
            latest = save_figure(fig, folder / "stretch_grid_latest.png")
            shutil.copyfile(latest, folder / f"stretch_grid_step{step:07d}.png")
            written["stretch_grid"] = latest
        if wandb_loggers(trainer) and written:
            import wandb

            wandb_log(
                trainer,
                {f"figures/{name}": wandb.Image(str(path)) for name, path in written.items()},
                step,
            )

"""The analysis of a trained generator behind ``icm-analyze``: SDR, stretch probe, modules,
targeted interventions and, on synthetic faces, ground-truth scores; figures and numbers.

:func:`run_analysis` measures a BetaVAE or DCGAN (``nets``, ``generate``, ``latent_dim``;
``encode`` for the parts that need reconstructions) and writes ``figures/*.png`` and
``analysis.json`` (keys: :data:`RESULT_KEYS`). The building blocks
:func:`discover_modules`, :func:`targeted_stretch` and :func:`fluo_images` work on any
generator given layer names, like the rest of ``icm``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from icm.data.faces import FLUO_HAIR, PART_NAMES, extrapolate, render
from icm.interventions import FLUO_VARIANTS, fluo_hair, stretch, stretch_cause, stretch_probe
from icm.layers import LEVELS, level_names, record_causes, resolve_layer
from icm.modules import ModuleResult, find_modules, influence_maps
from icm.report import ground_truth as gt
from icm.report.figures import save_figure, scale_bars, sdr_histograms, stretch_grid
from icm.report.ground_truth import eval_mode
from icm.spectral import sdr, sdr_stats

log = logging.getLogger(__name__)

#: Top-level keys of analysis.json.
RESULT_KEYS: tuple[str, ...] = (
    "checkpoint",
    "model",
    "hparams",
    "data",
    "sdr",
    "stretch",
    "modules",
    "targeted",
    "fluo",
    "ground_truth",
    "skipped",
    "figures",
    "seconds",
)
RUN_CONFIG = Path(".hydra") / "config.yaml"

__all__ = [
    "RESULT_KEYS",
    "check_config",
    "discover_modules",
    "fluo_images",
    "module_templates_figure",
    "probe_latents",
    "run_analysis",
    "targeted_stretch",
    "training_run_config",
]


# --------------------------------------------------------------------- generic building blocks


def discover_modules(
    model: nn.Module,
    layer: str,
    latents: Tensor | Callable[[int], Tensor],
    *,
    generate: Callable[[Tensor], Tensor] | None = None,
    k: int = 3,
    n_pairs: int = 32,
    percentile: float | None = 75.0,
    sigma: float | None = None,
    seed: int = 0,
    batch_size: int = 256,
) -> tuple[ModuleResult, Tensor]:
    """Channel modules of the cause of ``layer`` (sec. 5.3, App. B.7; Besserve et al. 2020).

    Elementary influence maps of every cause channel over ``n_pairs`` latent pairs
    (:func:`icm.modules.influence_maps`), then NMF into ``k`` modules
    (:func:`icm.modules.find_modules`). ``layer`` is a dotted path or a level name in
    ``model``; ``generate`` (latent → image) defaults to ``model``. Returns the modules and
    the (C, H, W) influence maps.
    """
    influence = influence_maps(
        model, layer, latents, n_pairs=n_pairs, sigma=sigma, generate=generate,
        batch_size=batch_size,
    )
    return find_modules(influence, k=k, percentile=percentile, seed=seed), influence


def targeted_stretch(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    z: Tensor,
    *,
    factor: float = 1.5,
    axis: str = "width",
    generate: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Rows of the targeted-stretch picture (sec. 5.3, Fig. 10) from latents ``z``.

    ``normal``: ``generate(z)``; ``targeted``: with only the cause ``channels`` of ``layer``
    stretched (:func:`icm.interventions.stretch_cause`); ``level``: all its channels
    stretched; ``image``: the plain stretch of the normal output. Eval mode, no gradients;
    flags restored. Images on the CPU.
    """
    run = model if generate is None else generate
    with eval_mode(model):
        normal = run(z)
        with stretch_cause(model, layer, factor, axis, channels=list(channels)):
            targeted = run(z)
        with stretch_cause(model, layer, factor, axis):
            whole = run(z)
    return {
        "normal": normal.cpu(),
        "targeted": targeted.cpu(),
        "level": whole.cpu(),
        "image": stretch(normal, factor, axis).cpu(),
    }


def fluo_images(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    z: Tensor,
    *,
    variants: Sequence[str] = tuple(FLUO_VARIANTS),
    generate: Callable[[Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """FluoHair rows (App. B.7, Fig. 1): ``normal`` and one output per variant, with the
    kernel of ``layer`` edited on the input ``channels`` (:func:`icm.interventions.fluo_hair`,
    weights restored afterwards)."""
    unknown = [v for v in variants if v not in FLUO_VARIANTS]
    if unknown:
        raise ValueError(f"fluo.variants: unknown {unknown}; known: {list(FLUO_VARIANTS)}")
    run = model if generate is None else generate
    conv = resolve_layer(model, layer)
    rows: dict[str, Tensor] = {}
    with eval_mode(model):
        rows["normal"] = run(z).cpu()
        for variant in variants:
            with fluo_hair(conv, channels, FLUO_VARIANTS[variant]):
                rows[variant] = run(z).cpu()
    return rows


def module_templates_figure(
    results: Mapping[str, ModuleResult],
    mean_masks: Tensor | np.ndarray | None = None,
    labels: Mapping[str, Sequence[str]] | None = None,
) -> Figure:
    """Module templates (the bottom panel of paper Fig. 10): one row per level, one panel per
    module (NMF component, peak 1), titled with its channel count; ``labels[level][m]``
    adds a line to the title (e.g. the part it overlaps best). With ``mean_masks``
    (P, H, W), a last row shows each part's frequency over the faces, for reference."""
    if not results:
        raise ValueError("results: no levels to draw")
    columns = max(max(r.k for r in results.values()), 0 if mean_masks is None else len(mean_masks))
    rows = len(results) + (0 if mean_masks is None else 1)
    fig = Figure(figsize=(1.7 * columns + 0.4, 1.9 * rows + 0.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, columns, squeeze=False)
    for ax in axes.ravel():
        ax.set_axis_off()
    for r, (level, result) in enumerate(results.items()):
        for m in range(result.k):
            ax = axes[r, m]
            ax.imshow(result.templates[m], cmap="magma", vmin=0.0, vmax=1.0)
            title = f"{level} m{m} ({len(result.members(m))} ch)"
            if labels and level in labels:
                title += f"\n{labels[level][m]}"
            ax.set_title(title, fontsize=7)
    if mean_masks is not None:
        masks = np.asarray(mean_masks)
        for p in range(len(masks)):
            ax = axes[-1, p]
            ax.imshow(masks[p], cmap="gray", vmin=0.0, vmax=1.0)
            ax.set_title(f"part: {PART_NAMES[p]}", fontsize=7)
    fig.subplots_adjust(left=0.02, right=0.98, bottom=0.02, top=0.9, wspace=0.1, hspace=0.5)
    return fig


def probe_latents(n: int, latent_dim: int, seed: int) -> Tensor:
    """``n`` latents from N(0, I) drawn on the CPU with a private generator seeded by
    ``seed``: the same draw as the training diagnostics' probe for the same seed."""
    return torch.randn(n, latent_dim, generator=torch.Generator().manual_seed(seed))


# --------------------------------------------------------------------------- configuration


def training_run_config(ckpt: str | Path) -> DictConfig | None:
    """The config of the ``icm-train`` run that wrote ``ckpt`` (``<run>/checkpoints/x.ckpt``
    → ``<run>/.hydra/config.yaml``), or None when there is none."""
    path = Path(ckpt).resolve().parent.parent / RUN_CONFIG
    if not path.is_file():
        return None
    loaded = OmegaConf.load(path)
    return loaded if isinstance(loaded, DictConfig) else None


def _checkpoint_path(cfg: DictConfig) -> str | None:
    if "ckpt" not in cfg or OmegaConf.is_missing(cfg, "ckpt") or cfg.ckpt is None:
        return None
    return str(cfg.ckpt)


def _dataset_node(run_cfg: DictConfig | None) -> DictConfig | None:
    if run_cfg is None:
        return None
    node = OmegaConf.select(run_cfg, "data.datamodule.dataset", default=None)
    return node if isinstance(node, DictConfig) else None


def _is_faces(node: DictConfig | None) -> bool:
    return node is not None and str(node.get("_target_", "")).endswith("SyntheticFaces")


class _Data:
    """What the analysis knows about the data: held-out faces (with masks) and/or images."""

    def __init__(self, kind: str, note: str) -> None:
        self.kind = kind
        self.note = note
        self.faces: gt.HeldOutFaces | None = None
        self.images: Tensor | None = None

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "source": self.note}
        if self.faces is not None:
            out["n_heldout"] = len(self.faces)
            out["image_size"] = self.faces.image_size
        if self.images is not None:
            out["n_images"] = len(self.images)
        return out


def _resolve_data(cfg: DictConfig, module: nn.Module, skipped: list[str]) -> _Data:
    """Held-out faces (``data.kind`` faces, or auto and the training run used them), the
    training run's own probe batch (auto, other datasets), or nothing."""
    kind = str(cfg.data.kind)
    hparams = dict(module.hparams)
    image_size, channels = int(hparams["image_size"]), int(hparams["image_channels"])
    ckpt = _checkpoint_path(cfg)
    run_cfg = training_run_config(ckpt) if ckpt else None
    node = _dataset_node(run_cfg)
    if kind == "none":
        return _Data("none", "data.kind=none")
    if kind == "faces" or (kind == "auto" and _is_faces(node)):
        if channels != 3:
            skipped.append(f"synthetic faces need an RGB model; this one has {channels} channel(s)")
            return _Data("none", "faces requested, model not RGB")
        ranges: Any = cfg.data.get("ranges")
        if ranges is None and _is_faces(node):
            ranges = node.get("ranges")
        ranges = None if ranges is None else OmegaConf.to_container(ranges, resolve=True)
        if _is_faces(node) and int(node.get("seed", -1)) == int(cfg.data.seed):
            raise ValueError(
                f"data.seed={cfg.data.seed} is the training set's seed: the held-out faces "
                "would be training faces; choose another data.seed"
            )
        data = _Data("faces", "training run config" if _is_faces(node) else "data.kind=faces")
        data.faces = gt.heldout_faces(
            int(cfg.data.n_heldout), int(cfg.data.seed), image_size, ranges
        )
        data.images = data.faces.images
        return data
    if node is not None:
        try:
            from hydra.utils import instantiate

            datamodule = instantiate(run_cfg.data.datamodule)
            data = _Data("training data", "training run config (probe_batch)")
            data.images = datamodule.probe_batch(int(cfg.probe.n))
            return data
        except Exception as exc:  # the training data may be absent here: say so, go on
            skipped.append(f"training data unavailable ({type(exc).__name__}: {exc})")
    else:
        skipped.append("no training run config beside the checkpoint and data.kind=auto")
    return _Data("none", "no images")


# ------------------------------------------------------------------------------- the stages


def _sdr_stage(
    module: nn.Module, latents: Tensor, images: Tensor | None, bins: int, skipped: list[str]
) -> tuple[dict[str, Any], dict[str, dict[str, Tensor]]]:
    """SDR (eq. 16, eq. 24 for transposed strides) of every level of both nets."""
    stats: dict[str, Any] = {}
    values: dict[str, dict[str, Tensor]] = {}
    device = next(module.parameters()).device
    for index, (name, net) in enumerate(module.nets.items()):
        inputs = latents if index == 0 else images
        if inputs is None:
            skipped.append(f"SDR of {name}: no images to feed it")
            continue
        levels = level_names(net)
        with eval_mode(net), record_causes(net, levels) as causes:
            net(inputs.to(device))
        values[name] = {}
        for level in levels:
            key = f"{name}.{level}"
            try:
                rho = sdr(resolve_layer(net, level), causes[level])
            except ValueError as exc:
                skipped.append(f"SDR of {key}: {exc}")
                continue
            values[name][level] = rho.cpu()
            stats[key] = sdr_stats(rho, bins=bins)
    return stats, values


def _level_order(generator: nn.Module, levels: Sequence[str], key: str) -> list[str]:
    known = level_names(generator)
    unknown = [level for level in levels if level not in known]
    if unknown:
        raise ValueError(f"{key}: unknown level(s) {unknown}; the generator has {known}")
    return [level for level in known if level in set(levels)]


def check_config(cfg: DictConfig) -> None:
    """The analysis settings that can be checked without a model; one-line ValueError naming
    the key."""
    if str(cfg.data.kind) not in ("auto", "faces", "none"):
        raise ValueError(f"data.kind must be one of auto, faces, none; got {cfg.data.kind!r}")
    for key in ("probe.n", "probe.columns", "data.n_heldout", "modules.k", "modules.n_pairs",
                "batch_size", "sdr.bins"):
        value = OmegaConf.select(cfg, key)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
    if int(cfg.data.n_heldout) < 2:
        raise ValueError(f"data.n_heldout must be at least 2, got {cfg.data.n_heldout}")
    levels = {"intervention.levels": list(cfg.intervention.levels),
              "modules.levels": list(cfg.modules.levels),
              "targeted.level": [cfg.targeted.level], "fluo.level": [cfg.fluo.level]}
    for key, names in levels.items():
        unknown = [name for name in names if name not in LEVELS]
        if unknown:
            raise ValueError(f"{key}: unknown level(s) {unknown}; levels: {list(LEVELS)}")
    for key in ("targeted.part", "fluo.part"):
        if OmegaConf.select(cfg, key) not in PART_NAMES:
            raise ValueError(f"{key} must be one of {list(PART_NAMES)}, got "
                             f"{OmegaConf.select(cfg, key)!r}")
    unknown = [v for v in cfg.fluo.variants if v not in FLUO_VARIANTS]
    if unknown:
        raise ValueError(f"fluo.variants: unknown {unknown}; known: {list(FLUO_VARIANTS)}")
    if not float(cfg.intervention.factor) > 0:
        raise ValueError(f"intervention.factor must be > 0, got {cfg.intervention.factor}")
    if str(cfg.intervention.axis) not in ("width", "height"):
        raise ValueError(
            f"intervention.axis must be width or height, got {cfg.intervention.axis!r}"
        )


def _module_index(result: ModuleResult, chosen: Any, key: str) -> int:
    if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < result.k:
        raise ValueError(f"{key} must be a module index in 0..{result.k - 1}, got {chosen!r}")
    return chosen


def _pick_module(
    section: DictConfig,
    key: str,
    modules: Mapping[str, Mapping[str, Any]],
    results: Mapping[str, ModuleResult],
    skipped: list[str],
) -> tuple[int, str] | None:
    """The module for a targeted intervention: ``<key>.module`` if set, else the module whose
    template overlaps ``<key>.part`` best (synthetic faces), else None (skipped)."""
    level = str(section.level)
    result = results[level]
    if section.get("module") is not None:
        return _module_index(result, section.module, f"{key}.module"), "config"
    alignment = modules[level].get("alignment")
    part = str(section.part)
    gt.part_index(part)
    if alignment is None:
        skipped.append(
            f"{key}: no part masks to find the {part} module automatically; set {key}.module"
        )
        return None
    best = alignment["best_module"][part]
    if best is None:
        skipped.append(f"{key}: overlap with {part} undefined for every module; set {key}.module")
        return None
    if alignment["best_by"][part] == "iou":
        return int(best), f"largest IoU with {part} ({alignment['best_iou'][part]:.3f})"
    return int(best), (f"largest template mass on {part} ({alignment['best_mass'][part]:.3f}); "
                       f"every IoU with {part} is 0")


def _rows(images: Mapping[str, Tensor], columns: int) -> tuple[list[Tensor], list[str]]:
    return [x[:columns] for x in images.values()], list(images)


def _jsonable(value: Any) -> Any:
    """Plain JSON values: NaN/inf → None, numpy and torch scalars → numbers, tuples → lists."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flat_numbers(prefix: str, value: Any, out: dict[str, float]) -> None:
    """Finite numbers of nested dicts under slash-joined names (for wandb)."""
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flat_numbers(f"{prefix}/{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        if math.isfinite(value):
            out[prefix] = float(value)


def _log_wandb(result: Mapping[str, Any], out_dir: Path, figures: Mapping[str, str]) -> None:
    """Numbers and figures of the analysis to an offline wandb run in ``out_dir``."""
    import wandb

    run = wandb.init(
        project="icm", job_type="analyze", dir=str(out_dir), mode="offline",
        config={"checkpoint": result["checkpoint"], "model": result["model"]},
    )
    try:
        numbers: dict[str, float] = {}
        for key in ("sdr", "stretch", "ground_truth"):
            _flat_numbers(key, result.get(key) or {}, numbers)
        payload: dict[str, Any] = dict(numbers)
        for name, rel in figures.items():
            payload[f"figures/{name}"] = wandb.Image(str(out_dir / rel))
        run.log(payload)
    finally:
        run.finish()


def run_analysis(module: nn.Module, cfg: DictConfig, out_dir: str | Path) -> dict[str, Any]:
    """Analyse a trained generator and write ``figures/*.png`` and ``analysis.json``.

    Stages (config keys of conf/analyze.yaml):

    1. SDR (eq. 16, 24) of every level of both nets: the generator on ``probe.n`` latents
       drawn with ``seed``, the encoder/discriminator on held-out images; histograms
       (Fig. 5, 8) and :func:`icm.spectral.sdr_stats` per layer.
    2. Stretch probe (sec. 5.2, Fig. 6): ``intervention.levels`` stretched by
       ``intervention.factor``; grid and per-scale Haar MSE.
    3. Modules (sec. 5.3, App. B.7) at ``modules.levels`` ∪ {``targeted.level``,
       ``fluo.level``}: on the posterior means of the held-out faces (VAE on faces) or on
       the probe latents; template figure; on faces, IoU and template mass per part.
    4. Targeted stretch (Fig. 10) of the ``targeted.part`` module at ``targeted.level``
       (or ``targeted.module``) and FluoHair (App. B.7) of the ``fluo.part`` module at
       ``fluo.level`` (or ``fluo.module``): grids.
    5. On synthetic faces with a VAE: ground-truth scores (:mod:`icm.report.ground_truth`):
       alignment, locality, FluoHair palette and leakage, extrapolation against truth.

    What cannot run (a DCGAN has no encoder, no masks without synthetic faces, no module
    index given) is listed under ``skipped``. ``wandb: true`` also logs the numbers and
    figures to an offline wandb run in ``out_dir``. Returns the JSON-ready result.
    """
    started = time.perf_counter()
    check_config(cfg)
    out = Path(out_dir)
    fig_dir = out / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    skipped: list[str] = []
    figures: dict[str, str] = {}
    seconds: dict[str, float] = {}
    generator = next(iter(module.nets.values()))
    generate = module.generate
    device = next(module.parameters()).device
    columns, batch = int(cfg.probe.columns), int(cfg.batch_size)
    has_encoder = callable(getattr(module, "encode", None))

    def save(name: str, fig: Figure) -> None:
        figures[name] = str(save_figure(fig, fig_dir / f"{name}.png").relative_to(out))

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        seconds[name] = round(now - since, 3)
        return now

    clock = time.perf_counter()
    data = _resolve_data(cfg, module, skipped)
    faces = data.faces
    latents = probe_latents(int(cfg.probe.n), int(module.latent_dim), int(cfg.seed)).to(device)
    clock = lap("data", clock)

    # 1. SDR of both nets.
    sdr_result, sdr_values = _sdr_stage(module, latents, data.images, int(cfg.sdr.bins), skipped)
    if sdr_values:
        save("sdr_histograms", sdr_histograms(sdr_values, bins=int(cfg.sdr.bins),
                                              title="SDR per level (eq. 16, 24)"))
    clock = lap("sdr", clock)

    # 2. Stretch probe.
    iv = cfg.intervention
    probe = stretch_probe(
        generator, latents, _level_order(generator, list(iv.levels), "intervention.levels"),
        factor=float(iv.factor),
        axis=str(iv.axis), generate=generate, return_images=True,
    )
    probe_images = probe.pop("images")
    rows, labels = _rows(probe_images, columns)
    save("stretch_probe", stretch_grid(rows, labels, columns, title=f"stretch ×{iv.factor}"))
    save("stretch_scales", scale_bars({lv: r["mse_per_scale"] for lv, r in probe.items()},
                                      title="Haar MSE of (stretched level − stretched image)"))
    clock = lap("stretch", clock)

    # 3. Modules.
    mc = cfg.modules
    module_levels = _level_order(
        generator, [*mc.levels, str(cfg.targeted.level), str(cfg.fluo.level)],
        "modules.levels, targeted.level, fluo.level",
    )
    use_faces = faces is not None and has_encoder
    if use_faces:
        mu, _ = gt.reconstruct(module, faces.images, batch)
        module_latents, latent_source = mu.to(device), "posterior means of the held-out faces"
    else:
        module_latents, latent_source = latents, "probe latents drawn from the prior"
    results: dict[str, ModuleResult] = {}
    modules: dict[str, dict[str, Any]] = {}
    labels_by_level: dict[str, list[str]] = {}
    for level in module_levels:
        result, _ = discover_modules(
            generator, level, module_latents, generate=generate, k=int(mc.k),
            n_pairs=int(mc.n_pairs), percentile=mc.percentile, sigma=mc.sigma,
            seed=int(cfg.seed), batch_size=batch,
        )
        results[level] = result
        entry: dict[str, Any] = {
            "k": result.k,
            "channels": len(result.assignment),
            "members": [result.members(m) for m in range(result.k)],
            "latents": latent_source,
            "alignment": None,
        }
        if faces is not None:
            entry["alignment"] = gt.module_alignment(
                result.templates, faces.masks, template_threshold=float(mc.template_threshold),
                mask_threshold=float(mc.mask_threshold),
            )
            best = entry["alignment"]["best_module"]
            labels_by_level[level] = [
                ", ".join(p for p in PART_NAMES if best[p] == m) or "-" for m in range(result.k)
            ]
        modules[level] = entry
    mean_masks = None if faces is None else faces.masks.double().mean(0).numpy()
    save("module_templates", module_templates_figure(results, mean_masks, labels_by_level or None))
    clock = lap("modules", clock)

    # 4. Targeted stretch and FluoHair.
    z_show = module_latents[: max(columns, 1)]
    targeted: dict[str, Any] | None = None
    picked = _pick_module(cfg.targeted, "targeted", modules, results, skipped)
    if picked is not None:
        m, why = picked
        level = str(cfg.targeted.level)
        channels = results[level].members(m)
        targeted = {"level": level, "module": m, "channels": channels, "chosen_by": why,
                    "part": str(cfg.targeted.part)}
        images = targeted_stretch(generator, level, channels, z_show, factor=float(iv.factor),
                                  axis=str(iv.axis), generate=generate)
        labels = {"normal": "reconstruction" if use_faces else "normal",
                  "targeted": f"{level} m{m} stretched", "level": f"{level} all stretched",
                  "image": "image stretched"}
        shown = {labels[k]: v for k, v in images.items()}
        if use_faces:
            shown = {"held-out original": faces.images[: len(z_show)], **shown}
            truth, _ = render(extrapolate(faces.factors, eye_spacing=float(iv.factor)),
                              faces.image_size)
            shown[f"truth: eye spacing ×{iv.factor}"] = truth[: len(z_show)]
        rows, row_labels = _rows(shown, columns)
        save("targeted_stretch", stretch_grid(rows, row_labels, columns,
                                              title="targeted stretch (Fig. 10)"))
    fluo: dict[str, Any] | None = None
    fc = cfg.fluo
    if int(module.hparams["image_channels"]) != 3:
        skipped.append("FluoHair: needs an RGB generator")
    else:
        picked = _pick_module(fc, "fluo", modules, results, skipped)
        if picked is not None:
            m, why = picked
            level = str(fc.level)
            channels = results[level].members(m)
            fluo = {"level": level, "module": m, "channels": channels, "chosen_by": why,
                    "part": str(fc.part), "variants": list(fc.variants)}
            shown = fluo_images(generator, level, channels, z_show, variants=list(fc.variants),
                                generate=generate)
            if use_faces:
                shown = {"held-out original": faces.images[: len(z_show)],
                         "reconstruction": shown.pop("normal"), **shown}
            if faces is not None:
                for name, colour in FLUO_HAIR.items():
                    truth, _ = render(extrapolate(faces.factors, hair_colour=colour),
                                      faces.image_size)
                    shown[f"true {name} (render)"] = truth[: len(z_show)]
            rows, row_labels = _rows(shown, columns)
            save("fluo_hair", stretch_grid(rows, row_labels, columns,
                                           title=f"FluoHair: {level} m{m} (App. B.7)"))
    clock = lap("interventions", clock)

    # 5. Ground truth on synthetic faces.
    truth_scores: dict[str, Any] | None = None
    if faces is None:
        skipped.append("ground-truth scores: the data are not synthetic faces")
    elif not has_encoder:
        skipped.append(
            f"ground-truth locality, FluoHair palette and extrapolation: {type(module).__name__} "
            "has no encoder to reconstruct held-out faces (module alignment is reported)"
        )
        truth_scores = {"alignment": {lv: e["alignment"] for lv, e in modules.items()}}
    else:
        truth_scores = {"alignment": {lv: e["alignment"] for lv, e in modules.items()},
                        "locality": {}}
        if targeted is not None:
            extra = gt.extrapolation_vs_truth(
                module, faces, targeted["level"], targeted["channels"], factor=float(iv.factor),
                axis=str(iv.axis), batch_size=batch,
            )
            truth_scores["extrapolation"] = extra
            truth_scores["locality"]["targeted_stretch"] = {
                "level": targeted["level"], "module": targeted["module"],
                "region": "eyes of the original ∪ eyes of the truth", **extra["locality"],
            }
        if fluo is not None:
            scores = gt.fluo_scores(
                module, faces, fluo["level"], fluo["channels"], variants=list(fc.variants),
                erosion=int(fc.erosion), band=fc.band, batch_size=batch,
            )
            truth_scores["fluo"] = scores
            for variant, s in scores["variants"].items():
                truth_scores["locality"][f"fluo_{variant}"] = {
                    "level": fluo["level"], "module": fluo["module"], "region": "hair",
                    **s["locality"],
                }
    lap("ground_truth", clock)

    result = {
        "checkpoint": _checkpoint_path(cfg),
        "model": type(module).__name__,
        "hparams": dict(module.hparams),
        "data": data.summary(),
        "sdr": sdr_result,
        "stretch": probe,
        "modules": modules,
        "targeted": targeted,
        "fluo": fluo,
        "ground_truth": truth_scores,
        "skipped": skipped,
        "figures": figures,
        "seconds": {**seconds, "total": round(time.perf_counter() - started, 3)},
    }
    result = _jsonable(result)
    (out / "analysis.json").write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    if cfg.get("wandb"):
        _log_wandb(result, out, figures)
    for note in skipped:
        log.info("skipped: %s", note)
    return result


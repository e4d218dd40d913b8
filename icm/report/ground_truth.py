"""Ground-truth scores of channel modules and targeted interventions on synthetic faces.

The procedural faces of :mod:`icm.data.faces` come with part masks and known factors, and
render outside the training ranges; that gives references the paper's CelebA experiments
lack (sec. 5.3, App. B.7, Fig. 1 and 10):

- *alignment*: IoU of each module template with each part's population mask;
- *locality*: the fraction of an intervention's output-change energy inside a part's mask;
- *FluoHair*: whether hair pixels leave the training hair palette, and how much of the
  change lands outside the hair;
- *extrapolation against truth*: a targeted stretch of the eye module of a reconstruction
  versus the true render with eye spacing × 1.5, and versus the plain image stretch.

All functions are pure: they take a module with ``encode(x) -> (mu, logvar)``,
``generate(z)`` and ``nets`` (generator net first), plus held-out faces, run without
gradients in eval mode, and restore every train/eval flag and every weight.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.ndimage import binary_erosion
from torch import Tensor, nn

from icm.data.faces import FLUO_HAIR, PART_NAMES, FaceRanges, extrapolate, render, sample_factors
from icm.interventions import FLUO_VARIANTS, fluo_hair, stretch, stretch_cause
from icm.layers import eval_mode, resolve_layer
from icm.modules import best_module_for_part, change_locality, module_part_iou

__all__ = [
    "HeldOutFaces",
    "chroma_points",
    "eval_mode",
    "extrapolation_vs_truth",
    "fluo_scores",
    "heldout_faces",
    "interior",
    "locality",
    "module_alignment",
    "outside_palette_fraction",
    "palette_band",
    "part_index",
    "reconstruct",
    "template_mass",
]


@dataclass(frozen=True)
class HeldOutFaces:
    """Faces drawn apart from the training set: factors, images (N, 3, H, W) in [-1, 1] and
    part masks (N, 5, H, W) bool in the order of ``PART_NAMES``."""

    factors: dict[str, np.ndarray]
    images: Tensor
    masks: Tensor
    ranges: FaceRanges

    def __len__(self) -> int:
        return len(self.images)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])


def heldout_faces(
    n: int, seed: int, image_size: int, ranges: FaceRanges | Mapping[str, Any] | None = None
) -> HeldOutFaces:
    """``n`` faces from the training ranges drawn with their own ``seed`` (use one that the
    training set does not), rendered at ``image_size``."""
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 2:
        raise ValueError(f"n: need an integer number of held-out faces >= 2, got {n!r}")
    if not isinstance(ranges, FaceRanges):
        ranges = FaceRanges.from_dict(ranges)
    factors = sample_factors(int(n), int(seed), ranges)
    images, masks = render(factors, int(image_size))
    return HeldOutFaces(factors=factors, images=images, masks=masks, ranges=ranges)


def part_index(part: str) -> int:
    """Index of ``part`` in ``PART_NAMES``; a clear error for an unknown name."""
    if part not in PART_NAMES:
        raise ValueError(f"part must be one of {list(PART_NAMES)}, got {part!r}")
    return PART_NAMES.index(part)


def _generator(model: nn.Module) -> nn.Module:
    nets = getattr(model, "nets", None)
    if not isinstance(nets, Mapping) or not nets:
        raise TypeError(f"model must expose `nets` (generator first), got {type(model).__name__}")
    return next(iter(nets.values()))


def _check_encoder(model: nn.Module) -> None:
    if not callable(getattr(model, "encode", None)):
        raise TypeError(
            f"model: {type(model).__name__} has no encoder (encode); ground-truth scores need "
            "reconstructions of held-out faces"
        )


def _batched(fn: Any, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def reconstruct(
    model: nn.Module, images: Tensor, batch_size: int = 256
) -> tuple[Tensor, Tensor]:
    """Posterior means ``mu`` of ``images`` and their decodings ``generate(mu)`` (eval mode)."""
    _check_encoder(model)
    device = next(model.parameters()).device
    with eval_mode(model):
        mu = _batched(lambda x: model.encode(x.to(device))[0], images, batch_size)
        return mu, _batched(model.generate, mu, batch_size).cpu()


def _nan_to_none(array: np.ndarray) -> list:
    return [[None if not np.isfinite(v) else float(v) for v in row] for row in array]


def template_mass(templates: Tensor | np.ndarray, masks: Tensor | np.ndarray) -> np.ndarray:
    """Share of each template's mass on each part, (k, P), threshold-free.

    mass[m, p] = Σ_x T_m(x) M̄_p(x) / Σ_x T_m(x), with M̄_p the fraction of faces whose pixel
    x belongs to part p. The masks partition every image, so each row sums to 1 (a row of
    zeros for an all-zero template is left NaN).
    """
    t = np.asarray(templates.detach().cpu() if isinstance(templates, Tensor) else templates)
    m = np.asarray(masks.detach().cpu() if isinstance(masks, Tensor) else masks)
    if t.ndim != 3 or m.ndim != 4 or t.shape[-2:] != m.shape[-2:]:
        raise ValueError(
            f"templates (k, H, W) and masks (N, P, H, W) must share H, W; got {t.shape}, {m.shape}"
        )
    t = t.reshape(len(t), -1).astype(np.float64)
    mean_mask = m.astype(np.float64).mean(axis=0).reshape(m.shape[1], -1)
    total = t.sum(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, (t @ mean_mask.T) / np.where(total > 0, total, 1), np.nan)


def module_alignment(
    templates: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    *,
    template_threshold: float = 0.5,
    mask_threshold: float = 0.1,
) -> dict[str, Any]:
    """Alignment of NMF module templates (k, H, W) with part masks (N, P, H, W).

    ``iou[m][p]``: IoU of template m binarized at ``template_threshold`` (templates peak at
    1) with the population mask of part p: the pixels that belong to p in more than
    ``mask_threshold`` of the faces (:func:`icm.modules.module_part_iou`). Faces move and
    the eyes are small (about 0.5 % of a 64×64 image), so no pixel is an eye in half of the
    faces: a low threshold keeps the small parts' population masks non-empty.
    ``mass[m][p]``: :func:`template_mass`. ``best_module[part]``: the module of largest IoU
    with that part; when every IoU is 0 or undefined (a small part no binarized template
    touches), the module of largest template mass on it instead; ``best_by[part]`` says
    which ("iou" or "mass"), ``best_iou`` / ``best_mass`` give the chosen module's values.
    NaN is written as None.
    """
    if not 0 <= template_threshold < 1:
        raise ValueError(f"template_threshold must lie in [0, 1), got {template_threshold}")
    if not 0 <= mask_threshold < 1:
        raise ValueError(f"mask_threshold must lie in [0, 1), got {mask_threshold}")
    iou = module_part_iou(templates, masks, template_threshold, mask_threshold)
    if iou.shape[1] != len(PART_NAMES):
        raise ValueError(f"masks must hold the {len(PART_NAMES)} parts {list(PART_NAMES)}")
    mass = template_mass(templates, masks)
    best: dict[str, int | None] = {}
    best_by: dict[str, str | None] = {}
    for p, part in enumerate(PART_NAMES):
        best[part], best_by[part] = None, None
        if np.nan_to_num(iou[:, p]).max() > 0:
            best[part], best_by[part] = best_module_for_part(iou, p), "iou"
        elif not np.isnan(mass[:, p]).all():
            best[part], best_by[part] = int(np.nanargmax(mass[:, p])), "mass"
    return {
        "parts": list(PART_NAMES),
        "iou": _nan_to_none(iou),
        "mass": _nan_to_none(mass),
        "best_module": best,
        "best_by": best_by,
        "best_iou": {part: None if m is None or np.isnan(iou[m, p]) else float(iou[m, p])
                     for p, (part, m) in enumerate(best.items())},
        "best_mass": {part: None if m is None or np.isnan(mass[m, p]) else float(mass[m, p])
                      for p, (part, m) in enumerate(best.items())},
        "template_threshold": float(template_threshold),
        "mask_threshold": float(mask_threshold),
    }


def locality(
    before: Tensor | np.ndarray, after: Tensor | np.ndarray, mask: Tensor | np.ndarray
) -> dict[str, float | None]:
    """Locality of a change: ``in_mask``, the fraction of the change energy Σ|after − before|²
    inside ``mask`` (per image, averaged; :func:`icm.modules.change_locality`), and
    ``mask_area``, the mean fraction of pixels in ``mask``, which is what a change spread
    evenly over the image would score. ``in_mask`` is None when nothing changed."""
    inside = change_locality(before, after, mask)
    area = float(np.asarray(mask.cpu() if isinstance(mask, Tensor) else mask).mean())
    return {"in_mask": None if np.isnan(inside) else float(inside), "mask_area": area}


# ----------------------------------------------------------------------------- FluoHair


def chroma_points(rgb: np.ndarray | Tensor) -> np.ndarray:
    """Colours (..., 3) in [0, 1] as points of the hue–chroma plane, (..., 2).

    The plane is the chromaticity plane of the RGB cube, perpendicular to its grey diagonal:
    p = (R − (G + B)/2, (√3/2)(G − B)). The polar angle of p is the hue and its radius the
    chroma (max − min of R, G, B, up to the hexagon-to-circle factor of at most 2/√3): the
    absolute saturation. Unlike HSV saturation (chroma / value) it stays put for dark
    colours: a 0.03 change of a black moves p by at most 0.05, its HSV saturation by ~0.7.
    """
    rgb = np.asarray(rgb.detach().cpu() if isinstance(rgb, Tensor) else rgb, dtype=np.float64)
    if rgb.shape[-1:] != (3,):
        raise ValueError(f"rgb must have a last axis of 3 colour channels, got {rgb.shape}")
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.stack([r - 0.5 * (g + b), (np.sqrt(3.0) / 2.0) * (g - b)], axis=-1)


def palette_band(palette: Sequence[Sequence[float]], jitter: float, steps: int = 5) -> float:
    """Radius of the training hair colours around their palette colours in the hue–chroma
    plane: the largest distance |p(clip(c + j)) − p(c)| over palette colours c and jitters j
    on a ``steps``³ grid of the training jitter cube [−jitter, jitter]³ (corners included;
    p is linear, so the corners attain the maximum up to the clipping)."""
    if jitter < 0:
        raise ValueError(f"jitter must be >= 0, got {jitter}")
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    colours = np.asarray(palette, dtype=np.float64).reshape(-1, 3)
    axis = np.linspace(-jitter, jitter, steps)
    offsets = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1).reshape(-1, 3)
    moved = np.clip(colours[:, None, :] + offsets[None, :, :], 0.0, 1.0)
    distance = np.linalg.norm(chroma_points(moved) - chroma_points(colours)[:, None, :], axis=-1)
    return float(distance.max())


def _rgb01(images: Tensor | np.ndarray) -> np.ndarray:
    """Images (N, 3, H, W) in [-1, 1] as (N, H, W, 3) in [0, 1]."""
    x = np.asarray(images.detach().cpu() if isinstance(images, Tensor) else images, np.float64)
    if x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"images must be RGB (N, 3, H, W), got shape {x.shape}")
    return np.clip((x.transpose(0, 2, 3, 1) + 1.0) / 2.0, 0.0, 1.0)


def outside_palette_fraction(
    images: Tensor | np.ndarray,
    pixels: Tensor | np.ndarray,
    palette: Sequence[Sequence[float]],
    band: float,
) -> float | None:
    """Fraction of the selected pixels whose colour lies outside the training palette.

    ``images`` (N, 3, H, W) in [-1, 1]; ``pixels`` (N, H, W) bool selects the pixels (e.g.
    the interior of the hair masks). A pixel is outside when its hue–chroma point
    (:func:`chroma_points`) is farther than ``band`` from the point of every palette colour
    (:func:`palette_band` gives the training jitter's own radius). None when no pixel is
    selected.
    """
    pick = np.asarray(pixels.cpu() if isinstance(pixels, Tensor) else pixels, dtype=bool)
    colours = _rgb01(images)
    if pick.shape != colours.shape[:3]:
        raise ValueError(f"pixels: shape {pick.shape} does not match images {colours.shape[:3]}")
    if not pick.any():
        return None
    points = chroma_points(colours[pick])
    anchors = chroma_points(np.asarray(palette, dtype=np.float64).reshape(-1, 3))
    nearest = np.linalg.norm(points[:, None, :] - anchors[None, :, :], axis=-1).min(axis=1)
    return float((nearest > band).mean())


def interior(masks: Tensor | np.ndarray, erosion: int = 1) -> np.ndarray:
    """Masks (N, H, W) bool eroded by ``erosion`` pixels (3×3 square element, per image):
    the anti-aliased border pixels mix a part's colour with its neighbours'."""
    m = np.asarray(masks.cpu() if isinstance(masks, Tensor) else masks, dtype=bool)
    if m.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {m.shape}")
    if erosion < 0:
        raise ValueError(f"erosion must be >= 0, got {erosion}")
    if erosion == 0:
        return m.copy()
    element = np.zeros((3, 3, 3), dtype=bool)
    element[1] = True  # erode within each image only
    return binary_erosion(m, structure=element, iterations=erosion)


def fluo_scores(
    model: nn.Module,
    faces: HeldOutFaces,
    level: str,
    channels: Sequence[int],
    *,
    variants: Sequence[str] = tuple(FLUO_VARIANTS),
    erosion: int = 1,
    band: float | None = None,
    batch_size: int = 256,
    return_images: bool = False,
) -> dict[str, Any]:
    """FluoHair (App. B.7) on reconstructions of held-out faces, against the hair masks.

    The kernel of ``level`` (the image level: last hidden maps → RGB) is edited by
    :func:`icm.interventions.fluo_hair` on the input ``channels`` of the hair module, with
    each variant's colour permutation (``FLUO_VARIANTS``), and the posterior means of the
    faces are decoded. Scores per variant:

    - ``outside_palette``: :func:`outside_palette_fraction` of the edited images on the hair
      pixels (hair masks eroded by ``erosion``), with the training palette of
      ``faces.ranges`` and ``band`` (default: :func:`palette_band` of the training jitter);
    - ``energy_outside_hair``: 1 − the locality of the change (edited − unedited
      reconstruction) inside the full hair masks;
    - ``locality``: :func:`locality` of that change in the hair masks.

    References under the same definition: ``unedited_outside_palette`` (the plain
    reconstructions), ``render_outside_palette`` (the held-out renders themselves) and
    ``fluo_render_outside_palette`` (the renders with their hair recoloured to each
    ``FLUO_HAIR`` colour: true fluorescent hair).
    """
    unknown = [v for v in variants if v not in FLUO_VARIANTS]
    if unknown:
        raise ValueError(f"variants: unknown {unknown}; known: {list(FLUO_VARIANTS)}")
    if faces.images.shape[1] != 3:
        raise ValueError("faces: FluoHair needs RGB images")
    conv = resolve_layer(_generator(model), level)
    hair = faces.masks[:, part_index("hair")].numpy()
    pixels = interior(hair, erosion)
    palette = faces.ranges.hair_palette
    if band is None:
        band = palette_band(palette, faces.ranges.hair_jitter)
    mu, recon = reconstruct(model, faces.images, batch_size)
    result: dict[str, Any] = {
        "level": level,
        "channels": [int(c) for c in channels],
        "band": float(band),
        "erosion": int(erosion),
        "hair_pixels": int(pixels.sum()),
        "unedited_outside_palette": outside_palette_fraction(recon, pixels, palette, band),
        "render_outside_palette": outside_palette_fraction(faces.images, pixels, palette, band),
        "fluo_render_outside_palette": {},
        "variants": {},
    }
    images: dict[str, Tensor] = {"reconstruction": recon}
    for name, colour in FLUO_HAIR.items():
        truth, _ = render(extrapolate(faces.factors, hair_colour=colour), faces.image_size)
        result["fluo_render_outside_palette"][name] = outside_palette_fraction(
            truth, pixels, palette, band
        )
    for variant in variants:
        with fluo_hair(conv, channels, FLUO_VARIANTS[variant]), eval_mode(model):
            edited = _batched(model.generate, mu, batch_size).cpu()
        change = locality(recon, edited, hair)
        outside = None if change["in_mask"] is None else 1.0 - change["in_mask"]
        result["variants"][variant] = {
            "outside_palette": outside_palette_fraction(edited, pixels, palette, band),
            "energy_outside_hair": outside,
            "locality": change,
        }
        images[variant] = edited
    if return_images:
        result["images"] = images
    return result


# ------------------------------------------------------------------ extrapolation vs truth


def _mse(a: Tensor, b: Tensor, region: Tensor | None = None) -> float | None:
    """Mean squared difference over images, channels and pixels (of ``region`` (N, H, W))."""
    sq = (a.double() - b.double()).square()
    if region is None:
        return float(sq.mean())
    weight = region.double().unsqueeze(1).expand_as(sq)
    total = float(weight.sum())
    return None if total == 0 else float((sq * weight).sum() / total)


def extrapolation_vs_truth(
    model: nn.Module,
    faces: HeldOutFaces,
    level: str,
    channels: Sequence[int],
    *,
    factor: float = 1.5,
    axis: str = "width",
    batch_size: int = 256,
    return_images: bool = False,
) -> dict[str, Any]:
    """Targeted stretch of the eye module versus the truth (sec. 5.3, Fig. 10).

    ``truth``: the held-out faces rendered with eye spacing × ``factor``, outside the
    training range. From the posterior means of the faces (:func:`reconstruct`):
    ``targeted``, the decoding with the cause channels ``channels`` of ``level`` stretched
    by ``factor`` along ``axis`` (:func:`icm.interventions.stretch_cause`); ``level_stretch``,
    all channels of ``level`` stretched; ``image_stretch``, the plain stretch of the
    reconstruction (:func:`icm.interventions.stretch`). Reports the MSE of each against the
    truth, plus ``reconstruction`` (the untouched reconstruction against the truth: the
    baseline) and ``reconstruction_error`` (reconstruction against the held-out originals:
    the model's floor). ``mse_in_region``: the same over the eye region only, the union of
    the eye masks of the original and of the truth (None when empty). ``locality``: the
    targeted change (targeted − reconstruction) in that eye region (:func:`locality`).
    """
    conv_net = _generator(model)
    resolve_layer(conv_net, level)  # a clear error for an unknown level before any work
    truth, truth_masks = render(
        extrapolate(faces.factors, eye_spacing=factor), faces.image_size
    )
    eyes = part_index("eyes")
    region = faces.masks[:, eyes] | truth_masks[:, eyes]
    mu, recon = reconstruct(model, faces.images, batch_size)
    with eval_mode(model):
        with stretch_cause(conv_net, level, factor, axis, channels=list(channels)):
            targeted = _batched(model.generate, mu, batch_size).cpu()
        with stretch_cause(conv_net, level, factor, axis):
            level_stretch = _batched(model.generate, mu, batch_size).cpu()
    image_stretch = stretch(recon, factor, axis)
    outputs = {
        "targeted": targeted,
        "level_stretch": level_stretch,
        "image_stretch": image_stretch,
        "reconstruction": recon,
    }
    result: dict[str, Any] = {
        "level": level,
        "channels": [int(c) for c in channels],
        "factor": float(factor),
        "axis": axis,
        "mse": {name: _mse(x, truth) for name, x in outputs.items()},
        "mse_in_region": {name: _mse(x, truth, region) for name, x in outputs.items()},
        "reconstruction_error": _mse(recon, faces.images),
        "region_area": float(region.double().mean()),
        "locality": locality(recon, targeted, region),
    }
    if return_images:
        result["images"] = {"original": faces.images, **outputs, "truth": truth}
    return result

"""Channel modules of a generator layer: hybrid samples, influence maps and their NMF (sec. 5.3).

Implements the counterfactual method of Besserve et al. (2020), used by the paper in sec. 5.3,
App. B.7 and Fig. 10: the channels of a level are the channels of its *cause* (the maps
entering that level's convolution). A *hybrid* sample takes the cause of ``z1`` and replaces
some channels by those of ``z2``; the *elementary influence map* of a channel is the mean
absolute change of the output when that channel alone is transferred; non-negative matrix
factorization (NMF) of the influence maps groups channels into modules.

The paper states no numbered equation for these steps; docstrings name them as
Besserve et al. (2020) do (hybridization, elementary influence map, NMF clustering).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from sklearn.decomposition import NMF
from torch import Tensor, nn

from icm.interventions import edit_cause
from icm.layers import eval_mode, record_causes, resolve_layer

Channels = Sequence[int] | Tensor | np.ndarray
Latents = Tensor | Callable[[int], Tensor]

__all__ = [
    "ModuleResult",
    "best_module_for_part",
    "change_locality",
    "find_modules",
    "hybrid",
    "influence_maps",
    "module_hybrid",
    "module_part_iou",
    "threshold_influence",
]


def _channel_index(channels: Channels, n_channels: int) -> Tensor:
    """Integer indices of ``channels`` (ints or a boolean mask), checked against the cause."""
    index = torch.as_tensor(np.asarray(channels) if not isinstance(channels, Tensor) else channels)
    if index.dtype == torch.bool:
        if index.shape != (n_channels,):
            raise ValueError(
                f"channels: boolean mask has shape {tuple(index.shape)}, the cause has "
                f"{n_channels} channels"
            )
        return index.nonzero().flatten()
    if index.numel() == 0:
        return torch.zeros(0, dtype=torch.long)
    if index.dim() != 1 or index.dtype.is_floating_point or index.is_complex():
        raise ValueError(
            f"channels must be a 1-d list of integer indices or a mask, got {channels}"
        )
    index = index.long()
    bad = index[(index < 0) | (index >= n_channels)]
    if bad.numel():
        raise ValueError(
            f"channels {bad.tolist()} out of range: the cause has {n_channels} channels"
        )
    return index


def _cause_channels(cause: Tensor) -> int:
    if cause.dim() < 2:
        raise ValueError(
            f"layer cause must have a channel dimension, got shape {tuple(cause.shape)}"
        )
    return cause.shape[1]


def _hybrid(
    model: nn.Module,
    layer: str,
    z1: Tensor,
    z2: Tensor,
    channels: Channels,
    generate: Callable[[Tensor], Tensor] | None,
    n_channels: int | None = None,
) -> Tensor:
    generate = model if generate is None else generate
    module = resolve_layer(model, layer)
    with eval_mode(model):
        with record_causes(model, [layer]) as causes:
            generate(z2)
        if layer not in causes:
            raise ValueError(f"layer {layer!r} received no input while generating from z2")
        donor = causes[layer]
        if n_channels is not None and _cause_channels(donor) != n_channels:
            raise ValueError(
                f"result: modules were found for {n_channels} channels, the cause of layer "
                f"{layer!r} has {donor.shape[1]}"
            )
        index = _channel_index(channels, _cause_channels(donor))

        def edit(cause: Tensor) -> Tensor:
            if cause.shape[1:] != donor.shape[1:] or donor.shape[0] not in (1, cause.shape[0]):
                raise ValueError(
                    f"z2: its cause at {layer!r} has shape {tuple(donor.shape)}, z1's has "
                    f"{tuple(cause.shape)} (batch sizes must match, or z2 hold one latent)"
                )
            out = cause.clone()
            out[:, index] = donor[:, index].to(out.dtype)
            return out

        with edit_cause(model, module, edit):
            return generate(z1)


def hybrid(
    model: nn.Module,
    layer: str,
    z1: Tensor,
    z2: Tensor,
    channels: Channels,
    generate: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Hybrid sample (hybridization of Besserve et al. 2020, used in sec. 5.3).

    Runs ``z2`` to ``layer`` and records its cause, then runs ``z1`` with the cause channels
    in ``channels`` replaced by ``z2``'s and finishes the forward pass. ``channels`` is a
    list of indices or a boolean mask over the cause's channels: empty gives x(z1), all
    channels give the continuation of x(z2). ``z2`` holds as many latents as ``z1`` or one
    (then it is the donor of every sample). ``generate`` (latent → image) defaults to
    ``model``; ``layer`` is resolved in ``model`` (dotted path or level name).

    Runs without gradients in eval mode (BatchNorm uses its running statistics); every
    module's training flag is restored afterwards.
    """
    return _hybrid(model, layer, z1, z2, channels, generate)


def _pairs(latents: Latents, n_pairs: int) -> tuple[Tensor, Tensor]:
    """Latent pairs (z1, z2): drawn from a callable, or formed from a tensor of latents.

    From a tensor of N latents, pair p is (i, (i + s) mod N) with i = p mod N and
    s = 1 + p // N, so no latent is paired with itself and pairs repeat only past N(N-1).
    """
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be at least 1, got {n_pairs}")
    if callable(latents) and not isinstance(latents, Tensor):
        z1, z2 = latents(n_pairs), latents(n_pairs)
        if len(z1) != n_pairs or len(z2) != n_pairs:
            raise ValueError(f"latents: the callable returned {len(z1)} latents for n={n_pairs}")
        return z1, z2
    if not isinstance(latents, Tensor):
        raise TypeError(f"latents must be a tensor or a callable n -> latents, got {latents!r}")
    n = len(latents)
    if n < 2:
        raise ValueError(f"latents: need at least 2 latents to form pairs, got {n}")
    if n_pairs > n * (n - 1):
        raise ValueError(
            f"n_pairs={n_pairs} exceeds the {n * (n - 1)} distinct pairs of {n} latents"
        )
    p = torch.arange(n_pairs, device=latents.device)
    first = p % n
    second = (first + 1 + p // n) % n
    return latents[first], latents[second]


def _batched(generate: Callable[[Tensor], Tensor], z: Tensor, batch_size: int) -> Tensor:
    return torch.cat([generate(z[i : i + batch_size]) for i in range(0, len(z), batch_size)])


def influence_maps(
    model: nn.Module,
    layer: str,
    latents: Latents,
    n_pairs: int = 32,
    sigma: float | None = None,
    generate: Callable[[Tensor], Tensor] | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Elementary influence map of each cause channel of ``layer`` (Besserve et al. 2020).

    EIM_c = mean over pairs (z1, z2) of |hybrid(z1, z2, {c}) − x(z1)|, averaged over colour
    channels: a (C, H, W) non-negative tensor at the output's resolution, C the number of
    channels entering ``layer``. ``latents`` is a tensor of latents (pairs formed from it,
    see ``_pairs``) or a callable n → n latents (called twice). Every (channel, pair) hybrid
    is one sample of a batched forward pass of ``batch_size`` samples. ``sigma`` (pixels)
    optionally smooths each map with a Gaussian (scipy.ndimage, reflecting borders).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    if sigma is not None and sigma < 0:
        raise ValueError(f"sigma must be non-negative, got {sigma}")
    generate = model if generate is None else generate
    module = resolve_layer(model, layer)
    z1, z2 = _pairs(latents, n_pairs)
    n_pairs = len(z1)
    with eval_mode(model):
        with record_causes(model, [layer]) as causes:
            donors = []
            for i in range(0, n_pairs, batch_size):
                generate(z2[i : i + batch_size])
                if layer not in causes:
                    raise ValueError(f"layer {layer!r} received no input while generating")
                donors.append(causes.pop(layer))
        donor = torch.cat(donors)
        n_channels = _cause_channels(donor)
        base = _batched(generate, z1, batch_size)
        if base.dim() != 4:
            raise ValueError(f"generate must return (B, C, H, W) images, got {tuple(base.shape)}")

        maps = torch.zeros(n_channels, *base.shape[-2:], dtype=base.dtype, device=base.device)
        # Flattened (channel, pair) grid, channel-major: sample j edits channel j // n_pairs
        # of pair j % n_pairs.
        current: dict[str, Tensor] = {}

        def edit(cause: Tensor) -> Tensor:
            out = cause.clone()
            rows = torch.arange(len(out), device=out.device)
            channel, pair = current["channel"], current["pair"]
            out[rows, channel] = donor[pair, channel].to(out.dtype)
            return out

        total = n_channels * n_pairs
        with edit_cause(model, module, edit):
            for start in range(0, total, batch_size):
                flat = torch.arange(start, min(start + batch_size, total), device=donor.device)
                current["channel"], current["pair"] = flat // n_pairs, flat % n_pairs
                out = generate(z1[current["pair"].to(z1.device)])
                pair, channel = current["pair"].to(base.device), current["channel"].to(base.device)
                change = (out - base[pair]).abs().mean(dim=1)
                maps.index_add_(0, channel, change)
    maps /= n_pairs
    if sigma:
        smoothed = gaussian_filter(maps.cpu().double().numpy(), sigma=(0, sigma, sigma))
        maps = torch.as_tensor(smoothed, dtype=maps.dtype, device=maps.device)
    return maps


def threshold_influence(influence: Tensor | np.ndarray, percentile: float | None) -> np.ndarray:
    """Zero each map's values at or below its own ``percentile`` (None: keep all).

    Returns a float64 array of the same (C, H, W) shape.
    """
    maps = np.asarray(influence.detach().cpu() if isinstance(influence, Tensor) else influence)
    maps = maps.astype(np.float64)
    if maps.ndim != 3:
        raise ValueError(f"influence must have shape (C, H, W), got {maps.shape}")
    if percentile is None:
        return maps
    if not 0 <= percentile < 100:
        raise ValueError(f"percentile must lie in [0, 100), got {percentile}")
    level = np.percentile(maps.reshape(len(maps), -1), percentile, axis=1)[:, None, None]
    return np.where(maps > level, maps, 0.0)


@dataclass(frozen=True)
class ModuleResult:
    """Channels grouped into modules by NMF of their influence maps.

    assignment: (C,) module of each channel (argmax of its loading);
    loadings: (C, k) non-negative weights, scaled so that loadings @ templates.reshape(k, -1)
    is the NMF reconstruction of the (thresholded) influence maps;
    templates: (k, H, W) NMF components, each normalized to a maximum of 1.
    """

    assignment: np.ndarray
    loadings: np.ndarray
    templates: np.ndarray

    @property
    def k(self) -> int:
        return len(self.templates)

    def members(self, m: int) -> list[int]:
        """Channel indices assigned to module ``m``."""
        if not 0 <= m < self.k:
            raise ValueError(f"module {m} out of range: there are {self.k} modules")
        return np.flatnonzero(self.assignment == m).tolist()


def find_modules(
    influence: Tensor | np.ndarray,
    k: int = 3,
    percentile: float | None = 75.0,
    seed: int = 0,
    max_iter: int = 1000,
) -> ModuleResult:
    """Group channels into ``k`` modules (NMF clustering of Besserve et al. 2020; App. B.7).

    Each (H, W) influence map is thresholded at its own ``percentile`` (values at or below
    set to 0; None keeps everything), the channels × pixels matrix is factorized with
    ``sklearn.decomposition.NMF`` (init "nndsvda", ``random_state=seed``) into loadings
    (C, k) and components (k, H·W), and each channel goes to the module of its largest
    loading (every channel exactly once; a channel with no influence at all goes to 0).
    """
    maps = threshold_influence(influence, percentile)
    n_channels = len(maps)
    if not isinstance(k, int | np.integer) or not 1 <= k <= n_channels:
        raise ValueError(f"k must be an integer in [1, {n_channels}] (number of channels), got {k}")
    if (maps < 0).any():
        raise ValueError("influence must be non-negative")
    if not maps.any():
        raise ValueError("influence: every map is zero after thresholding; nothing to factorize")
    matrix = maps.reshape(n_channels, -1)
    nmf = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=max_iter)
    loadings = nmf.fit_transform(matrix)
    components = nmf.components_
    peak = components.max(axis=1)
    scale = np.where(peak > 0, peak, 1.0)
    templates = (components / scale[:, None]).reshape(k, *maps.shape[1:])
    loadings = loadings * scale[None, :]
    return ModuleResult(assignment=loadings.argmax(axis=1), loadings=loadings, templates=templates)


def module_hybrid(
    model: nn.Module,
    layer: str,
    z1: Tensor,
    z2: Tensor,
    result: ModuleResult,
    module: int,
    generate: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Transfer all channels of one module from ``z2`` to ``z1`` (a ``hybrid`` on its members).

    ``result`` must come from the influence maps of the same ``layer``.
    """
    return _hybrid(
        model, layer, z1, z2, result.members(module), generate, n_channels=len(result.assignment)
    )


def _as_numpy(x: Tensor | np.ndarray) -> np.ndarray:
    return np.asarray(x.detach().cpu() if isinstance(x, Tensor) else x)


def module_part_iou(
    templates: Tensor | np.ndarray,
    masks: Tensor | np.ndarray,
    threshold: float = 0.5,
    mask_threshold: float = 0.5,
) -> np.ndarray:
    """IoU of each binarized module template with each part mask: (k, P).

    Templates (k, H, W) are binarized as ``template > threshold``; part masks (N, P, H, W)
    bool are averaged over the N images and binarized as ``mean > mask_threshold``.
    IoU = |A ∩ B| / |A ∪ B|, NaN where both are empty.
    """
    templates = _as_numpy(templates)
    masks = _as_numpy(masks)
    if templates.ndim != 3:
        raise ValueError(f"templates must have shape (k, H, W), got {templates.shape}")
    if masks.ndim != 4:
        raise ValueError(f"masks must have shape (N, P, H, W), got {masks.shape}")
    if masks.shape[-2:] != templates.shape[-2:]:
        raise ValueError(
            f"masks: maps of size {masks.shape[-2:]} differ from the templates' "
            f"{templates.shape[-2:]}"
        )
    a = (templates > threshold).reshape(len(templates), -1).astype(np.float64)
    b = masks.astype(np.float64).mean(axis=0) > mask_threshold
    b = b.reshape(b.shape[0], -1).astype(np.float64)
    inter = a @ b.T
    union = a.sum(1)[:, None] + b.sum(1)[None, :] - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def best_module_for_part(iou: np.ndarray, part_index: int) -> int:
    """Module whose template overlaps part ``part_index`` best (argmax of ``iou[:, part]``)."""
    iou = np.asarray(iou)
    if iou.ndim != 2:
        raise ValueError(f"iou must have shape (k, P), got {iou.shape}")
    if not 0 <= part_index < iou.shape[1]:
        raise ValueError(f"part_index {part_index} out of range: there are {iou.shape[1]} parts")
    column = iou[:, part_index]
    if np.isnan(column).all():
        raise ValueError(f"part_index {part_index}: IoU undefined for every module")
    return int(np.nanargmax(column))


def change_locality(
    before: Tensor | np.ndarray, after: Tensor | np.ndarray, mask: Tensor | np.ndarray
) -> float:
    """Fraction of the output-change energy Σ|after − before|² lying inside ``mask``.

    ``before``/``after``: (N, C, H, W) or (N, H, W) images; ``mask``: (N, H, W) or (H, W)
    bool. The fraction is computed per image and averaged; images with no change at all
    are left out, and NaN is returned when no image changed.
    """
    before, after, mask = _as_numpy(before), _as_numpy(after), _as_numpy(mask)
    if before.shape != after.shape:
        raise ValueError(f"after: shape {after.shape} differs from before's {before.shape}")
    if mask.dtype != np.bool_:
        raise ValueError(f"mask must be boolean, got dtype {mask.dtype}")
    energy = (after.astype(np.float64) - before.astype(np.float64)) ** 2
    if energy.ndim == 4:
        energy = energy.sum(axis=1)
    if energy.ndim != 3:
        raise ValueError(f"before must have shape (N, C, H, W) or (N, H, W), got {before.shape}")
    try:
        mask = np.broadcast_to(mask, energy.shape)
    except ValueError:
        raise ValueError(
            f"mask: shape {mask.shape} does not match images of shape {energy.shape}"
        ) from None
    total = energy.sum(axis=(1, 2))
    inside = (energy * mask).sum(axis=(1, 2))
    changed = total > 0
    if not changed.any():
        return float("nan")
    return float((inside[changed] / total[changed]).mean())

"""Interventions on a running network: stretch the maps entering a layer, edit weights.

Paper sec. 5.2 (stretch of a level's activation maps compared with the stretched image,
Fig. 6, 9), sec. 5.3 (stretch of a channel subset, Fig. 10) and App. B.7 (FluoHair kernel
edit, Fig. 1). Every edit is a context manager that restores the network on exit, also
after an error. Works on any ``nn.Module`` given layer names (``icm.layers``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from icm.layers import eval_mode, resolve_layer
from icm.wavelets import haar_scales

__all__ = [
    "FLUO_VARIANTS",
    "edit_cause",
    "fluo_hair",
    "stretch",
    "stretch_cause",
    "stretch_probe",
]

_AXES = {"width": -1, "height": -2}

# App. B.7: flipping the sign of the hair channels' kernel coefficients gives pink hair;
# permuting the colour channels of those same coefficients turns the pink into other hues.
# ``permute[o]`` is the output channel whose (sign-flipped) coefficients output channel ``o``
# takes. Pink is strong red, weaker blue, weakest green (e.g. RGB 255, 105, 180):
# - "green" (1, 0, 2) swaps red and green, so the strong component drives green:
#   (105, 255, 180), a fluorescent mint green;
# - "blue" (1, 2, 0) moves the strong red component to blue and the blue one to green:
#   (105, 180, 255), a bright sky blue.
FLUO_VARIANTS: dict[str, tuple[int, int, int] | None] = {
    "pink": None,
    "green": (1, 0, 2),
    "blue": (1, 2, 0),
}


def _check_factor(factor: float) -> float:
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise ValueError(f"intervention.factor must be a positive number, got {factor!r}")
    if not math.isfinite(factor) or factor <= 0:
        raise ValueError(f"intervention.factor must be finite and > 0, got {factor!r}")
    return float(factor)


def _check_axis(axis: str) -> int:
    if axis not in _AXES:
        raise ValueError(f"intervention.axis must be one of {sorted(_AXES)}, got {axis!r}")
    return _AXES[axis]


def stretch(x: torch.Tensor, factor: float = 1.5, axis: str = "width") -> torch.Tensor:
    """Centred stretch of maps or images ``x`` (..., H, W) along one axis (sec. 5.2).

    Output sample ``j`` of the axis (length ``n``, centre ``c = (n - 1) / 2``) is read at
    source position ``c + (j - c) / factor`` by linear interpolation between the two
    nearest samples (bilinear on the image plane, the other axis being untouched); the
    result keeps the input size, so ``factor > 1`` enlarges about the centre and crops,
    ``factor < 1`` shrinks and fills the border by replicating the edge samples (positions
    are clamped to the axis). Interpolation weights sum to one and the edge fill copies
    real samples, so the stretch commutes with every per-pixel affine map: a 1x1
    convolution with bias gives the same result whether its input or its output is
    stretched (zero fill would break this at the border). ``factor == 1`` returns an
    exact copy. The same operator serves hidden maps and images. Differentiable; floating
    dtypes are kept, other dtypes are interpolated in float64 and rounded back.
    """
    factor = _check_factor(factor)
    dim = _check_axis(axis)
    if not isinstance(x, torch.Tensor) or x.ndim < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"x must be a tensor of shape (..., H, W), got {shape}")
    n = x.shape[dim]
    if factor == 1.0 or n < 2:
        return x.clone()
    if not (x.is_floating_point() or x.is_complex()):
        out = stretch(x.to(torch.float64), factor, axis)
        return out.round().to(x.dtype) if x.dtype != torch.bool else out > 0.5
    centre = (n - 1) / 2
    positions = torch.arange(n, dtype=torch.float64, device=x.device)
    source = (centre + (positions - centre) / factor).clamp(0, n - 1)
    left = source.floor().clamp(max=n - 2).long()
    weight = (source - left).to(x.real.dtype if x.is_complex() else x.dtype)
    weight = weight if dim == -1 else weight.unsqueeze(-1)  # broadcast along the axis
    return x.index_select(dim, left) * (1 - weight) + x.index_select(dim, left + 1) * weight


@contextmanager
def edit_cause(
    model: nn.Module, layer: str | nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]
) -> Iterator[nn.Module]:
    """Replace the cause of ``layer`` by ``fn(cause)`` in every forward pass inside the block.

    The cause of a layer is the tensor entering it (DESIGN.md); ``layer`` is a dotted module
    name or a level name (``icm.layers.resolve_layer``), or the sub-module itself.
    Implemented as a forward pre-hook, removed on exit even after an error; nested edits of
    the same layer apply in the order they were entered. Yields the layer module.
    """
    module = layer if isinstance(layer, nn.Module) else resolve_layer(model, layer)

    def hook(_module: nn.Module, args: tuple) -> tuple:
        if not args or not isinstance(args[0], torch.Tensor):
            raise TypeError(f"layer {layer!r} received no positional tensor input to edit")
        edited = fn(args[0])
        if not isinstance(edited, torch.Tensor):
            raise TypeError(f"fn for layer {layer!r} must return a tensor, got {type(edited)}")
        return (edited, *args[1:])

    handle = module.register_forward_pre_hook(hook)
    try:
        yield module
    finally:
        handle.remove()


def _channel_index(
    channels: Iterable[int] | torch.Tensor, num: int, device: torch.device
) -> torch.Tensor:
    """Sorted unique channel indices as a long tensor on ``device``, checked against ``num``."""
    index = torch.as_tensor(channels).reshape(-1).cpu()
    if index.numel() and (index.is_floating_point() or index.dtype == torch.bool):
        raise ValueError(f"intervention.channels must be integer indices, got {index.tolist()}")
    index = index.long()
    if index.numel() and (index.min() < 0 or index.max() >= num):
        raise ValueError(
            f"intervention.channels must lie in 0..{num - 1}, got {sorted(index.tolist())}"
        )
    return index.unique().to(device)


@contextmanager
def stretch_cause(
    model: nn.Module,
    layer: str | nn.Module,
    factor: float = 1.5,
    axis: str = "width",
    channels: Sequence[int] | torch.Tensor | None = None,
) -> Iterator[nn.Module]:
    """Stretch the cause of ``layer`` (all channels, or only ``channels``) inside the block.

    The intervention of sec. 5.2 (all maps of a level) and sec. 5.3 (the channels of one
    module, Fig. 10): the maps entering the layer's convolution are passed through
    :func:`stretch`; channels are indexed along dim -3 of the cause (C of (B, C, H, W)).
    """
    _check_factor(factor)
    _check_axis(axis)
    if channels is not None:
        channels = torch.as_tensor(channels).reshape(-1)

    def edit(cause: torch.Tensor) -> torch.Tensor:
        if channels is None:
            return stretch(cause, factor, axis)
        if cause.ndim < 3:
            raise ValueError(
                f"intervention.channels needs a cause of shape (..., C, H, W), "
                f"got {tuple(cause.shape)} at layer {layer!r}"
            )
        index = _channel_index(channels, cause.shape[-3], cause.device)
        if index.numel() == 0:
            return cause
        picked = stretch(cause.index_select(-3, index), factor, axis)
        return cause.index_copy(cause.ndim - 3, index, picked)

    with edit_cause(model, layer, edit) as module:
        yield module


@contextmanager
def fluo_hair(
    conv: nn.Conv2d | nn.ConvTranspose2d,
    channels: Sequence[int] | torch.Tensor,
    permute: Sequence[int] | None = None,
) -> Iterator[nn.Module]:
    """FluoHair kernel edit of App. B.7 (Fig. 1), undone on exit.

    Flips the sign of the kernel coefficients of ``conv`` (the image level, mapping the
    last hidden layer to colour channels) that read the input ``channels`` (the hair
    module's channels); with ``permute``, those same coefficients are also permuted across
    output channels: output channel ``o`` takes the flipped coefficients of output channel
    ``permute[o]`` (see ``FLUO_VARIANTS``). The bias and all other coefficients are
    untouched. Handles the Conv2d (out, in, kh, kw) and ConvTranspose2d (in, out, kh, kw)
    weight layouts. The original weight tensor is copied back on exit, bit for bit, also
    after an error. Yields ``conv``.
    """
    if not isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)):
        raise TypeError(f"conv must be an nn.Conv2d or nn.ConvTranspose2d, got {type(conv)}")
    if conv.groups != 1:
        raise ValueError(f"conv must have groups=1 for fluo_hair, got groups={conv.groups}")
    transposed = isinstance(conv, nn.ConvTranspose2d)
    in_dim, out_dim = (0, 1) if transposed else (1, 0)
    index = _channel_index(channels, conv.in_channels, conv.weight.device)
    if permute is not None:
        permute = [int(p) for p in permute]
        if sorted(permute) != list(range(conv.out_channels)):
            raise ValueError(
                f"permute must be a permutation of 0..{conv.out_channels - 1}, got {permute}"
            )
    weight = conv.weight
    original = weight.detach().clone()
    try:
        with torch.no_grad():
            picked = -weight.index_select(in_dim, index)
            if permute is not None:
                order = torch.as_tensor(permute, dtype=torch.long, device=weight.device)
                picked = picked.index_select(out_dim, order)
            weight.index_copy_(in_dim, index, picked)
        yield conv
    finally:
        with torch.no_grad():
            weight.copy_(original)


def stretch_probe(
    model: nn.Module,
    z: torch.Tensor,
    levels: Sequence[str] | str,
    factor: float = 1.5,
    axis: str = "width",
    wavelet_levels: int | None = None,
    generate: Callable[[torch.Tensor], torch.Tensor] | None = None,
    *,
    channels: Mapping[str, Sequence[int]] | None = None,
    return_images: bool = False,
) -> dict[str, dict]:
    """Stretch probe of sec. 5.2 (Fig. 6, 9): stretch each level's cause, compare with the
    stretched image, scale by scale.

    ``x = generate(z)`` (default ``model(z)``); for each level, ``x_level`` is the output
    with that level's cause stretched (only ``channels[level]`` when given, sec. 5.3),
    ``target = stretch(x)`` and ``diff = x_level - target``. Returns, for each level name,
    ``{"mse", "energy_per_scale", "mse_per_scale", "approx_energy", "approx_mse"}``: the
    MSE over images, channels and pixels, and the Haar per-scale energy and MSE (lists,
    scale 1 coarsest, averaged over the images; :func:`icm.wavelets.haar_scales`, J =
    ``wavelet_levels``). With ``return_images=True`` the result also holds
    ``"images": {"normal": x, <level>: x_level, ..., "stretched": target}``, the rows of
    Fig. 6a in order. Pure: runs under ``torch.no_grad()`` with the model in eval mode (BN
    uses its running statistics), and restores every sub-module's train/eval flag.
    """
    if isinstance(levels, str):
        levels = [levels]
    levels = list(levels)
    if not levels:
        raise ValueError("levels must name at least one layer")
    if return_images and "images" in levels:
        raise ValueError("levels must not contain 'images' when return_images=True")
    _check_factor(factor)
    _check_axis(axis)
    channels = dict(channels or {})
    unknown = set(channels) - set(levels)
    if unknown:
        raise ValueError(f"intervention.channels names levels not probed: {sorted(unknown)}")
    run = model if generate is None else generate

    result: dict[str, dict] = {}
    images: dict[str, torch.Tensor] = {}
    with eval_mode(model):
        x = run(z)
        if not isinstance(x, torch.Tensor) or x.ndim != 4:
            raise ValueError("generate(z) must return images of shape (B, C, H, W)")
        target = stretch(x, factor, axis)
        for level in levels:
            with stretch_cause(model, level, factor, axis, channels.get(level)):
                x_level = run(z)
            diff = x_level - target
            report = haar_scales(diff, wavelet_levels)
            result[level] = {
                "mse": float(diff.double().square().mean()),
                "energy_per_scale": report.energy.tolist(),
                "mse_per_scale": report.mse.tolist(),
                "approx_energy": report.approx_energy,
                "approx_mse": report.approx_mse,
            }
            if return_images:
                images[level] = x_level
    if return_images:
        result["images"] = {"normal": x, **images, "stretched": target}
    return result

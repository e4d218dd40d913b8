"""Find layers of any ``nn.Module`` by name and record the maps entering them.

The *cause* of a layer is the tensor entering its convolution (DESIGN.md); it is what the
SDR (eq. 16) pairs with the kernel and what a stretch intervention edits.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

# The generator's four convolution levels, from latent to image (paper Fig. 4b).
LEVELS: tuple[str, ...] = ("coarse", "intermediate", "fine", "image")


def resolve_layer(model: nn.Module, name: str) -> nn.Module:
    """Return the sub-module of ``model`` called ``name``.

    ``name`` is either a dotted module path (``"decoder.fine"``, as in
    ``model.named_modules()``) or a level name (``"fine"``) looked up in ``model.levels``
    when the model has such a mapping.
    """
    levels = getattr(model, "levels", None)
    if isinstance(levels, Mapping) and name in levels:
        return levels[name]
    modules = dict(model.named_modules())
    if name in modules and name != "":
        return modules[name]
    known = list(levels.keys()) if isinstance(levels, Mapping) else []
    known += [n for n, _ in model.named_modules() if n][:20]
    raise KeyError(f"layer {name!r} not found in {type(model).__name__}; known names: {known}")


def level_names(model: nn.Module) -> list[str]:
    """Level names of ``model`` (its ``levels`` mapping), in order from latent to image."""
    levels = getattr(model, "levels", None)
    if not isinstance(levels, Mapping):
        raise AttributeError(f"{type(model).__name__} has no `levels` mapping")
    return list(levels.keys())


@contextmanager
def record_causes(
    model: nn.Module, names: Iterable[str], *, detach: bool = True
) -> Iterator[dict[str, torch.Tensor]]:
    """Record the input of each named layer during the forward passes run inside the block.

    Yields a dict filled by forward pre-hooks: ``causes[name]`` is the last input seen by
    that layer. Hooks are removed on exit, also after an exception.
    """
    causes: dict[str, torch.Tensor] = {}
    handles = []

    def make_hook(key: str):
        def hook(_module: nn.Module, args: tuple) -> None:
            causes[key] = args[0].detach() if detach else args[0]

        return hook

    try:
        for name in names:
            handles.append(resolve_layer(model, name).register_forward_pre_hook(make_hook(name)))
        yield causes
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Eval mode (BatchNorm uses running statistics, no dropout) without gradients; every
    sub-module's own train/eval flag is restored on exit, also after an error."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        for module, flag in flags:
            module.training = flag

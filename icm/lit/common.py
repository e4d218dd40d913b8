"""Helpers shared by the Lightning modules: batches to images, default optimizers, plain values."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any

import torch
from torch import Tensor

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def adam(lr: float, betas: tuple[float, float] = (0.5, 0.999)) -> OptimizerFactory:
    """An Adam factory ``params -> optimizer``, the same shape as a Hydra ``_partial_`` config."""
    return functools.partial(torch.optim.Adam, lr=lr, betas=betas)


def images_from_batch(batch: Any) -> Tensor:
    """The image tensor ``(B, C, H, W)`` of a batch: the batch itself, or the first element of
    a (images, ...) tuple/list."""
    if isinstance(batch, Tensor):
        images = batch
    elif isinstance(batch, Sequence) and batch and isinstance(batch[0], Tensor):
        images = batch[0]
    else:
        raise TypeError(
            f"batch must be an image tensor or (images, ...), got {type(batch).__name__}"
        )
    if images.dim() != 4:
        raise ValueError(f"batch images must be (B, C, H, W), got shape {tuple(images.shape)}")
    return images


def plain(value: Any) -> Any:
    """``value`` as plain Python (dict/list/str/int/float/bool/None), e.g. from an OmegaConf
    container, so that hyper-parameters load with ``torch.load(weights_only=True)``."""
    if isinstance(value, Enum):
        return plain(value.value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (
        isinstance(value, Sequence) and not isinstance(value, (str, bytes))
    ):
        return [plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    for kind in (str, int, float):
        if isinstance(value, kind):
            return kind(value)
    if hasattr(value, "item"):  # numpy / torch scalars
        return value.item()
    raise TypeError(f"cannot store hyper-parameter value of type {type(value).__name__}")

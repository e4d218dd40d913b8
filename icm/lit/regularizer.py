"""The SDR regularizer (paper sec. 4.2, eq. 17; sec. 5.2.2): drive chosen generator levels
towards spectral independence from the maps they filter, jointly with the training objective or
in alternation with it. One implementation serves BetaVAE and DCGAN."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from icm import spectral
from icm.layers import level_names, record_causes, resolve_layer

MODES: tuple[str, ...] = ("none", "alternate", "joint")
DEFAULTS: dict[str, Any] = {"mode": "none", "weight": 0.0, "levels": [], "lr": 1e-4}


def regularizer_config(config: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validated plain-dict regularizer config; ``None`` means mode ``none``.

    Keys: ``mode`` (none | alternate | joint), ``weight`` (λ >= 0), ``levels`` (generator
    level names), ``lr`` (> 0, the alternate optimizer's step size). Missing keys take the
    defaults of ``DEFAULTS``. Errors name ``regularizer.<key>`` and the allowed values; the
    levels are checked against a network by :class:`SDRRegularizer`.
    """
    if config is None:
        return {**DEFAULTS, "levels": []}
    if not isinstance(config, Mapping):
        raise ValueError(f"regularizer must be a mapping or None, got {type(config).__name__}")
    unknown = sorted(set(map(str, config)) - set(DEFAULTS))
    if unknown:
        raise ValueError(f"regularizer: unknown key(s) {unknown}; allowed: {list(DEFAULTS)}")
    cfg = {**DEFAULTS, **{str(k): v for k, v in config.items()}}
    mode = getattr(cfg["mode"], "value", cfg["mode"])  # a str Enum from a structured config
    if mode not in MODES:
        raise ValueError(f"regularizer.mode must be one of {list(MODES)}, got {mode!r}")
    try:
        weight, lr = float(cfg["weight"]), float(cfg["lr"])
    except (TypeError, ValueError):
        raise ValueError(
            f"regularizer.weight and regularizer.lr must be numbers, got {cfg['weight']!r}, "
            f"{cfg['lr']!r}"
        ) from None
    if not weight >= 0:
        raise ValueError(f"regularizer.weight must be >= 0, got {cfg['weight']!r}")
    if not lr > 0:
        raise ValueError(f"regularizer.lr must be > 0, got {cfg['lr']!r}")
    levels = cfg["levels"]
    if isinstance(levels, str) or not all(isinstance(level, str) for level in levels):
        raise ValueError(f"regularizer.levels must be a list of level names, got {levels!r}")
    levels = list(levels)
    if mode != "none" and not levels:
        raise ValueError(f"regularizer.levels must name at least one level in mode {mode!r}")
    return {"mode": mode, "weight": weight, "levels": levels, "lr": lr}


class SDRRegularizer:
    """SDR penalty (eq. 17) on the kernels of some levels of a generator, summed over levels.

    The penalty of a level pairs each kernel slice of its convolution with the channel of its
    cause (the maps entering it) that it filters, and is summed over pairs (eq. 17; strided
    layers as in eq. 24). Causes are recorded with :meth:`record` during the generator's
    forward pass of a training step and detached: the maps are held fixed and only the
    kernels receive gradient.

    Modes:

    - ``none``: nothing is recorded, penalised or logged.
    - ``joint``: the module adds ``weight * penalty(causes)`` to its training loss.
    - ``alternate`` (paper sec. 5.2.2): after each optimizer step of the module, :meth:`step`
      makes one step of its own Adam (``lr``) on ``weight * penalty`` w.r.t. the chosen
      kernels only. This optimizer is not a Lightning optimizer (so not counted in
      ``trainer.global_step``); its state travels in checkpoints through
      :meth:`state_dict` / :meth:`load_state_dict`. Adam is nearly invariant to the scale
      of its gradient, so here ``weight`` acts mainly as on/off and ``lr`` sets the pace.
    """

    def __init__(self, generator: nn.Module, config: Mapping[str, Any] | None) -> None:
        self.config = regularizer_config(config)
        known = level_names(generator)
        unknown = [level for level in self.config["levels"] if level not in known]
        if unknown:
            raise ValueError(f"regularizer.levels: unknown level(s) {unknown}; allowed: {known}")
        self.generator = generator
        self.layers: dict[str, nn.Module] = {
            level: resolve_layer(generator, level) for level in self.config["levels"]
        }
        self.optimizer: torch.optim.Optimizer | None = None
        if self.mode == "alternate":
            self.optimizer = torch.optim.Adam(self.kernels(), lr=self.config["lr"])
        self._causes: dict[str, Tensor] | None = None

    @property
    def mode(self) -> str:
        return self.config["mode"]

    @property
    def weight(self) -> float:
        return self.config["weight"]

    @property
    def levels(self) -> list[str]:
        return list(self.config["levels"])

    @property
    def active(self) -> bool:
        """Whether the regularizer does anything (mode other than ``none``)."""
        return self.mode != "none"

    def kernels(self) -> list[nn.Parameter]:
        """The kernels (convolution weights) of the regularized levels, in config order."""
        return [layer.weight for layer in self.layers.values()]

    @contextmanager
    def record(self) -> Iterator[dict[str, Tensor]]:
        """Record the detached causes of the regularized levels during the generator forward
        passes inside the block; they are yielded and, in mode ``alternate``, kept for the
        next :meth:`step`.
        A no-op (yields an empty dict) in mode ``none``."""
        if not self.active:
            yield {}
            return
        with record_causes(self.generator, self.levels, detach=True) as causes:
            yield causes
        if self.mode == "alternate":
            self._causes = causes

    def penalty(self, causes: Mapping[str, Tensor]) -> Tensor:
        """Σ over levels of the eq. 17 penalty (without ``weight``), in float32 and outside
        autocast so that mixed precision does not degrade the spectra."""
        missing = [level for level in self.levels if level not in causes]
        if missing:
            raise ValueError(f"causes: no recorded input for level(s) {missing}")
        device_type = next(iter(causes.values())).device.type
        with torch.autocast(device_type=device_type, enabled=False):
            terms = [
                spectral.sdr_penalty(layer, causes[level].float())
                for level, layer in self.layers.items()
            ]
        return torch.stack([t.float() for t in terms]).sum()

    def step(self, reduce: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
        """One alternate step on ``weight * penalty`` over the last recorded causes.

        ``reduce`` maps each kernel gradient before the step (e.g. a mean over DDP processes,
        so that every process takes the same step). The kernels' existing ``.grad`` is left
        as it was. Returns the penalty before the step (detached), or None when the mode is
        not ``alternate`` or nothing was recorded since the last step.
        """
        if self.mode != "alternate" or self._causes is None:
            return None
        assert self.optimizer is not None
        causes, self._causes = self._causes, None
        kernels = self.kernels()
        with torch.enable_grad():
            value = self.penalty(causes)
            grads = torch.autograd.grad(self.weight * value, kernels)
        if reduce is not None:
            grads = tuple(reduce(g) for g in grads)
        saved = [k.grad for k in kernels]
        for kernel, grad in zip(kernels, grads, strict=True):
            kernel.grad = grad.to(kernel.dtype)
        self.optimizer.step()
        for kernel, grad in zip(kernels, saved, strict=True):
            kernel.grad = grad
        return value.detach()

    def state_dict(self) -> dict[str, Any]:
        """Checkpoint state: the config and the alternate optimizer's state (or None)."""
        return {
            "config": dict(self.config, levels=self.levels),
            "optimizer": self.optimizer.state_dict() if self.optimizer is not None else None,
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the alternate optimizer's state when both the checkpoint and this
        regularizer have one for the same levels (a changed mode starts a fresh optimizer)."""
        saved = state.get("optimizer")
        if self.optimizer is None or saved is None:
            return
        if list(state.get("config", {}).get("levels", [])) != self.levels:
            raise ValueError(
                f"regularizer.levels {self.levels} differ from the checkpoint's "
                f"{state['config']['levels']}; cannot restore the regularizer's optimizer"
            )
        self.optimizer.load_state_dict(saved)

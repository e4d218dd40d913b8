"""Benchmarks 1, 2 and 7: `icm.spectral.sdr` against reference implementations, the SDR of every
layer as a fraction of a training step, and the alternate SDR penalty step (eq. 17)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from omegaconf import DictConfig
from torch import nn

from benchmarks.references import naive_sdr, padded_sdr, spread_pairs
from benchmarks.timing import interleaved, median, profile_torch, spread
from benchmarks.workloads import (
    ALTERNATE,
    Sizes,
    make_datamodule,
    make_model,
    result,
    train_step,
)
from icm.callbacks.probe import eval_mode
from icm.layers import level_names, record_causes, resolve_layer
from icm.spectral import sdr


def _causes(net: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """The maps entering every level of ``net`` (eval mode, no grad), as Diagnostics records
    them."""
    levels = level_names(net)
    with eval_mode(net), record_causes(net, levels) as causes:
        net(inputs)
    return dict(causes)


def _latents(n: int, dim: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


def _max_abs_diff(rho: torch.Tensor, reference: torch.Tensor) -> float:
    """Largest |rho - reference| over the pairs where `sdr` is defined (0.0 if none is)."""
    defined = torch.isfinite(rho)
    if not bool(defined.any()):
        return 0.0
    return float((rho - reference)[defined].abs().max())


def _ms(seconds: float) -> float:
    return round(seconds * 1e3, 3)


def periodogram_variants(x: torch.Tensor, repeats: int) -> dict[str, Any]:
    """The batch-summed periodogram of causes ``x`` (B, C, h, w) (eq. 16) two ways: cast to
    float64, rfft2, ``abs().square()`` and a float64 energy pass; or float32 rfft2 with
    re² + im² summed over the batch in float64 (energy read off R(0)). Their times and the
    largest relative difference: what the periodogram's formulation costs."""

    def float64() -> torch.Tensor:
        y = x.to(torch.float64)
        y.square().sum(dim=(0, 2, 3))  # the energy pass
        return torch.fft.rfft2(y).abs().square().sum(dim=0)

    def float32() -> torch.Tensor:
        spectrum = torch.view_as_real(torch.fft.rfft2(x.float()))
        return spectrum.square().sum(dim=-1).sum(dim=0, dtype=torch.float64)

    times = interleaved({"float64": float64, "float32": float32}, repeats, warmup=1)
    reference = float64()
    error = float((float32() - reference).abs().max() / reference.abs().max())
    t64, t32 = median(times["float64"]), median(times["float32"])
    return {
        "cause": list(x.shape),
        "float64_ms": _ms(t64),
        "float32_ms": _ms(t32),
        "speedup": round(t64 / t32, 2),
        "max_relative_difference": error,
    }


def sdr_vs_references(cfg: DictConfig, sizes: Sizes, profile: bool = False) -> dict[str, Any]:
    """Benchmark 1: `sdr` (lag form) against a naive per-pair FFT loop and against every kernel
    padded to the grid and transformed (references.py), on the decoder levels (eq. 16, 24)."""
    model = make_model(cfg)
    decoder = model.decoder
    causes = _causes(decoder, _latents(sizes.batch, model.latent_dim))
    arms, levels = {}, {}
    for level in level_names(decoder):
        layer = resolve_layer(decoder, level)
        x = causes[level]
        stride = tuple(layer.stride)
        transposed = isinstance(layer, nn.ConvTranspose2d)
        c_out = layer.out_channels
        c_in = layer.in_channels
        pairs = spread_pairs(c_out, c_in, sizes.naive_pairs)
        levels[level] = {"layer": layer, "x": x, "pairs": pairs, "stride": stride,
                         "transposed": transposed, "total_pairs": c_out * c_in}
        arms[f"{level}/sdr"] = partial(sdr, layer, x)
        arms[f"{level}/padded"] = partial(
            padded_sdr, layer.weight, x, stride=stride, transposed=transposed
        )
        arms[f"{level}/naive"] = partial(
            naive_sdr, layer.weight, x, pairs, stride=stride, transposed=transposed
        )
    times = interleaved(arms, sizes.repeats, warmup=1)

    rows, total = [], {"sdr": 0.0, "padded": 0.0, "naive": 0.0}
    worst_padded = worst_naive = 0.0
    for level, spec in levels.items():
        layer, x = spec["layer"], spec["x"]
        # The references must agree with sdr, or the comparison means nothing.
        rho = sdr(layer, x).double()
        padded = padded_sdr(layer.weight, x, stride=spec["stride"], transposed=spec["transposed"])
        naive = naive_sdr(layer.weight, x, spec["pairs"], stride=spec["stride"],
                          transposed=spec["transposed"])
        subset = torch.stack([rho[o, i] for o, i in spec["pairs"]])
        worst_padded = max(worst_padded, _max_abs_diff(rho, padded))
        worst_naive = max(worst_naive, _max_abs_diff(subset, naive))
        t_sdr = median(times[f"{level}/sdr"])
        t_padded = median(times[f"{level}/padded"])
        per_pair = median(times[f"{level}/naive"]) / len(spec["pairs"])
        t_naive = per_pair * spec["total_pairs"]
        total["sdr"] += t_sdr
        total["padded"] += t_padded
        total["naive"] += t_naive
        rows.append({
            "level": level,
            "cause": list(x.shape),
            "stride": list(spec["stride"]),
            "pairs": spec["total_pairs"],
            "naive_pairs_timed": len(spec["pairs"]),
            "sdr_ms": _ms(t_sdr),
            "padded_ms": _ms(t_padded),
            "naive_ms_per_pair": _ms(per_pair),
            "naive_ms_extrapolated": _ms(t_naive),
            "speedup_vs_naive": round(t_naive / t_sdr, 1),
            "speedup_vs_padded": round(t_padded / t_sdr, 2),
            "sdr_spread": round(spread(times[f"{level}/sdr"]), 3),
        })
    speedup = total["naive"] / total["sdr"]
    details: dict[str, Any] = {
        "levels": rows,
        "sdr_ms": _ms(total["sdr"]),
        "padded_ms": _ms(total["padded"]),
        "naive_ms_extrapolated": _ms(total["naive"]),
        "speedup_vs_padded": round(total["padded"] / total["sdr"], 2),
        "max_abs_diff_padded": worst_padded,
        "max_abs_diff_naive": worst_naive,
        "batch": sizes.batch,
        "repeats": sizes.repeats,
    }
    record = result(
        1, "sdr_speedup", "SDR: `sdr` vs naive per-pair FFT loop (decoder levels)",
        speedup, "×", 100.0, ">=",
        f"Decoder of the configured β-VAE at init, causes of {sizes.batch} latents; "
        f"median of {sizes.repeats} interleaved rounds per level; the naive loop is timed on "
        f"{sizes.naive_pairs} evenly spread pairs per level and extrapolated per pair to all "
        "pairs. Both references agree with `sdr` (max |Δρ| in details).",
        details,
    )
    if profile or not record["met"]:
        record["profile"] = profile_torch(
            lambda: [sdr(spec["layer"], spec["x"]) for spec in levels.values()]
        )
        # The largest cause dominates (see the profile): what a cheaper periodogram would save.
        largest = max(levels.values(), key=lambda spec: spec["x"].numel())["x"]
        details["periodogram"] = periodogram_variants(largest, sizes.repeats)
    return record


def sdr_fraction(cfg: DictConfig, sizes: Sizes, profile: bool = False) -> dict[str, Any]:
    """Benchmark 2: SDR of every decoder and encoder level on a batch against one training
    step; also with the forward passes that record the causes (as Diagnostics runs it)."""
    model = make_model(cfg)
    optimizer = model.configure_optimizers()
    images = make_datamodule(cfg).probe_batch(sizes.batch)
    latents = _latents(sizes.batch, model.latent_dim)
    inputs = {"decoder": latents, "encoder": images}
    nets = model.nets

    def sdr_all_layers(recorded: dict[str, dict[str, torch.Tensor]] | None = None) -> None:
        for name, net in nets.items():
            causes = recorded[name] if recorded else _causes(net, inputs[name])
            for level in level_names(net):
                sdr(resolve_layer(net, level), causes[level])

    recorded = {name: _causes(net, inputs[name]) for name, net in nets.items()}
    times = interleaved(
        {
            "step": lambda: train_step(model, optimizer, images),
            "sdr_with_forward": sdr_all_layers,
            "sdr_only": lambda: sdr_all_layers(recorded),
        },
        sizes.repeats,
        warmup=1,
    )
    t_step = median(times["step"])
    t_all = median(times["sdr_with_forward"])
    t_only = median(times["sdr_only"])
    layers = sum(len(level_names(net)) for net in nets.values())
    details = {
        "train_step_ms": _ms(t_step),
        "sdr_with_forward_ms": _ms(t_all),
        "sdr_only_ms": _ms(t_only),
        "fraction_with_forward": round(t_all / t_step, 4),
        "layers": layers,
        "batch": sizes.batch,
        "spread": {k: round(spread(v), 3) for k, v in times.items()},
    }
    record = result(
        2, "sdr_step_fraction", "SDR of all decoder + encoder levels / one training step",
        t_only / t_step, "", 0.25, "<=",
        f"`sdr` of the {layers} layers on the causes of {sizes.batch} probe latents (decoder) "
        "and images (encoder), recorded beforehand; details add the two eval-mode forward "
        "passes that record them, as the Diagnostics callback runs it. The step is a bare "
        "β-VAE step (loss, "
        f"backward, Adam) on the same images; medians of {sizes.repeats} interleaved rounds.",
        details,
    )
    if profile or not record["met"]:
        record["profile"] = profile_torch(lambda: sdr_all_layers(recorded))
    return record


def penalty_fraction(cfg: DictConfig, sizes: Sizes, profile: bool = False) -> dict[str, Any]:
    """Benchmark 7: the alternate SDR regularizer step (eq. 17, sec. 5.2.2: penalty of the
    image, fine and intermediate levels, its gradient and an Adam step) against the β-VAE step
    it follows."""
    model = make_model(cfg, regularizer=dict(ALTERNATE))
    optimizer = model.configure_optimizers()
    images = make_datamodule(cfg).probe_batch(sizes.batch)
    penalties: list[float] = []

    def regularizer_step() -> None:
        value = model.sdr_regularizer.step()
        if value is None:
            raise RuntimeError("the regularizer step found no recorded causes")
        penalties.append(float(value))

    # Rounds alternate VAE step, regularizer step: each regularizer step uses the causes the
    # step before it recorded, as in training.
    times = interleaved(
        {"vae_step": lambda: train_step(model, optimizer, images), "penalty": regularizer_step},
        sizes.repeats,
        warmup=1,
    )
    t_vae = median(times["vae_step"])
    t_penalty = median(times["penalty"])
    details = {
        "vae_step_ms": _ms(t_vae),
        "penalty_step_ms": _ms(t_penalty),
        "levels": list(ALTERNATE["levels"]),
        "penalty_first_last": [penalties[0], penalties[-1]],
        "batch": sizes.batch,
        "spread": {k: round(spread(v), 3) for k, v in times.items()},
    }
    record = result(
        7, "penalty_step_fraction", "SDR penalty step (`alternate`) / β-VAE step",
        t_penalty / t_vae, "", None, "<=",
        "Configured β-VAE with regularizer alternate (weight 1, levels image, fine, "
        "intermediate, lr 1e-4); bare VAE step (recording the causes) then "
        f"`sdr_regularizer.step()`; medians of {sizes.repeats} interleaved rounds.",
        details,
    )
    if profile:
        train_step(model, optimizer, images)  # records the causes the profiled step uses
        record["profile"] = profile_torch(model.sdr_regularizer.step)
    return record

"""icm-analyze and its parts: ground-truth scores on cases with known answers, module
discovery and targeted interventions on a generator defined only here, the analysis of a
DCGAN and of a VAE without masks, and the command end to end on a short training run."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from matplotlib.colors import rgb_to_hsv
from torch import nn

from icm.cli import CONF_DIR
from icm.data.faces import FLUO_HAIR, PART_NAMES, extrapolate, render, sample_factors
from icm.interventions import stretch
from icm.lit import DCGAN, BetaVAE
from icm.report import ground_truth as gt
from icm.report.analysis import (
    RESULT_KEYS,
    discover_modules,
    fluo_images,
    run_analysis,
    targeted_stretch,
)

EYES, HAIR = PART_NAMES.index("eyes"), PART_NAMES.index("hair")
TINY_ANALYSIS = [
    "probe.n=8", "probe.columns=4", "data.n_heldout=8", "modules.n_pairs=4", "modules.k=2",
    "sdr.bins=10",
]


def analyze_cfg(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return compose(config_name="analyze", overrides=overrides)


@pytest.fixture(scope="module")
def faces() -> gt.HeldOutFaces:
    return gt.heldout_faces(6, seed=11, image_size=32)


@pytest.fixture(scope="module")
def vae() -> BetaVAE:
    torch.manual_seed(0)
    return BetaVAE(latent_dim=4, channels=[8, 8, 4, 4], image_size=32, image_channels=3).eval()


# --------------------------------------------------------------- ground truth, known answers


def test_alignment_of_templates_equal_to_the_part_masks():
    _, masks = render(sample_factors(1, seed=3), 64)
    masks = masks.expand(3, -1, -1, -1)  # the same face three times: population mask = mask
    templates = masks[0].double()
    align = gt.module_alignment(templates, masks, mask_threshold=0.5)
    assert align["parts"] == list(PART_NAMES)
    np.testing.assert_allclose(np.array(align["iou"], dtype=float), np.eye(len(PART_NAMES)))
    np.testing.assert_allclose(np.array(align["mass"], dtype=float), np.eye(len(PART_NAMES)))
    assert align["best_module"] == {part: p for p, part in enumerate(PART_NAMES)}
    assert set(align["best_by"].values()) == {"iou"}


def test_alignment_falls_back_to_template_mass_when_no_template_reaches_a_part():
    _, masks = render(sample_factors(1, seed=3), 64)
    masks = masks.expand(2, -1, -1, -1)
    hair, face, eyes = (masks[0, PART_NAMES.index(p)].double() for p in ("hair", "face", "eyes"))
    templates = torch.stack([hair + 0.1 * eyes, face * 0.2 + 0.4 * eyes]).clamp(max=1)
    templates[1] += face * 0.8 * (~masks[0, EYES])  # template 1 peaks on the face, not the eyes
    align = gt.module_alignment(templates, masks, mask_threshold=0.5)
    assert align["iou"][0][EYES] == 0.0 and align["iou"][1][EYES] == 0.0
    assert align["best_module"]["eyes"] == 1 and align["best_by"]["eyes"] == "mass"
    assert align["best_module"]["hair"] == 0 and align["best_by"]["hair"] == "iou"
    assert align["best_mass"]["eyes"] == pytest.approx(align["mass"][1][EYES])


def test_template_mass_against_a_loop_and_rows_summing_to_one():
    rng = np.random.default_rng(0)
    templates = rng.random((3, 6, 5))
    labels = rng.integers(0, 5, size=(4, 6, 5))
    masks = labels[:, None] == np.arange(5)[None, :, None, None]
    mass = gt.template_mass(templates, masks)
    reference = np.zeros((3, 5))
    for m in range(3):
        for p in range(5):
            frequency = masks[:, p].mean(axis=0)
            reference[m, p] = (templates[m] * frequency).sum() / templates[m].sum()
    np.testing.assert_allclose(mass, reference)
    np.testing.assert_allclose(mass.sum(axis=1), 1.0)


def test_locality_of_changes_inside_outside_and_split():
    mask = torch.zeros(2, 8, 8, dtype=torch.bool)
    mask[:, 2:4, 2:6] = True  # 8 pixels per image
    before = torch.zeros(2, 3, 8, 8)
    inside = before + mask[:, None].float()
    assert gt.locality(before, inside, mask) == {"in_mask": 1.0, "mask_area": 8 / 64}
    assert gt.locality(before, before + (~mask)[:, None].float(), mask)["in_mask"] == 0.0
    split = inside.clone()
    split[:, :, 6:7, 0:8] = 1.0  # 8 outside pixels with the same change as the 8 inside
    assert gt.locality(before, split, mask)["in_mask"] == pytest.approx(0.5)
    assert gt.locality(before, before, mask)["in_mask"] is None


def test_chroma_points_of_primaries_and_greys():
    colours = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 0], [0, 1, 1], [0, 0, 1], [1, 0, 1]], float)
    points = gt.chroma_points(colours)
    np.testing.assert_allclose(np.hypot(points[:, 0], points[:, 1]), 1.0)  # chroma 1
    angle = np.degrees(np.arctan2(points[:, 1], points[:, 0])) % 360
    np.testing.assert_allclose(angle, rgb_to_hsv(colours)[:, 0] * 360, atol=1e-9)
    np.testing.assert_allclose(gt.chroma_points(np.full((4, 3), 0.3)), 0.0, atol=1e-12)


def test_palette_band_is_the_jitter_radius():
    assert gt.palette_band([(0.5, 0.5, 0.5)], 0.0) == 0.0
    # The projection is linear: the farthest jitter corner (J, -J, -J) lands 2J away.
    assert gt.palette_band([(0.5, 0.5, 0.5)], 0.03) == pytest.approx(0.06)


def test_outside_palette_is_zero_for_training_hair_and_one_for_fluo_hair():
    held = gt.heldout_faces(8, seed=21, image_size=64)
    palette, jitter = held.ranges.hair_palette, held.ranges.hair_jitter
    band = gt.palette_band(palette, jitter)
    pixels = gt.interior(held.masks[:, HAIR], erosion=1)
    assert pixels.sum() > 100
    # A few interior hair pixels still blend with the skin under the anti-aliased fringe.
    assert gt.outside_palette_fraction(held.images, pixels, palette, band) < 0.01
    assert gt.outside_palette_fraction(held.images, pixels, palette, band + 0.01) == 0.0
    for colour in FLUO_HAIR.values():
        fluo, _ = render(extrapolate(held.factors, hair_colour=colour), 64)
        assert gt.outside_palette_fraction(fluo, pixels, palette, band) == 1.0
        assert gt.outside_palette_fraction(fluo, pixels, palette, band=10.0) == 0.0
    assert gt.outside_palette_fraction(held.images, np.zeros_like(pixels), palette, band) is None


def test_interior_erodes_each_image_on_its_own():
    masks = np.zeros((2, 8, 8), dtype=bool)
    masks[0] = True
    masks[1, 2:6, 2:6] = True
    out = gt.interior(masks, erosion=1)
    expected = np.zeros_like(masks)
    expected[0, 1:-1, 1:-1] = True
    expected[1, 3:5, 3:5] = True
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(gt.interior(masks, erosion=0), masks)


def test_extrapolation_vs_truth_identities(vae, faces):
    channels = list(range(8))  # every channel of the intermediate cause
    full = gt.extrapolation_vs_truth(vae, faces, "intermediate", channels)
    # Independent reference: decode the posterior means by hand, stretch, compare.
    with torch.no_grad():
        recon = vae.decoder(vae.encoder(faces.images)[0])
    truth, truth_masks = render(extrapolate(faces.factors, eye_spacing=1.5), 32)
    mse = full["mse"]
    image_stretch = float((stretch(recon, 1.5) - truth).square().mean())
    assert mse["image_stretch"] == pytest.approx(image_stretch)
    assert mse["reconstruction"] == pytest.approx(float((recon - truth).square().mean()))
    assert full["reconstruction_error"] == pytest.approx(
        float((recon - faces.images).square().mean())
    )
    assert mse["targeted"] == pytest.approx(mse["level_stretch"])  # all channels = the level
    region = faces.masks[:, EYES] | truth_masks[:, EYES]
    assert full["region_area"] == pytest.approx(float(region.double().mean()))
    none = gt.extrapolation_vs_truth(vae, faces, "intermediate", [])
    assert none["mse"]["targeted"] == pytest.approx(none["mse"]["reconstruction"])
    assert none["locality"]["in_mask"] is None
    assert vae.training is False


def test_fluo_scores_references_and_restored_weights(vae, faces):
    weight = vae.decoder.image.weight.detach().clone()
    empty = gt.fluo_scores(vae, faces, "image", [])
    pixels = gt.interior(faces.masks[:, HAIR], erosion=1)
    band = gt.palette_band(faces.ranges.hair_palette, faces.ranges.hair_jitter)
    assert empty["band"] == band and empty["hair_pixels"] == pixels.sum()
    assert empty["render_outside_palette"] == gt.outside_palette_fraction(
        faces.images, pixels, faces.ranges.hair_palette, band
    )
    assert empty["fluo_render_outside_palette"] == {name: 1.0 for name in FLUO_HAIR}
    for scores in empty["variants"].values():  # no channel edited: nothing changes
        assert scores["outside_palette"] == empty["unedited_outside_palette"]
        assert scores["energy_outside_hair"] is None
    full = gt.fluo_scores(vae, faces, "image", [0, 1, 2, 3], return_images=True)
    assert torch.equal(vae.decoder.image.weight, weight)
    images = full.pop("images")
    for variant, scores in full["variants"].items():
        assert not torch.equal(images[variant], images["reconstruction"])
        assert 0.0 <= scores["energy_outside_hair"] <= 1.0
        assert scores["energy_outside_hair"] == pytest.approx(
            1.0 - scores["locality"]["in_mask"]
        )
    with pytest.raises(ValueError, match="variants"):
        gt.fluo_scores(vae, faces, "image", [0], variants=["purple"])


def test_ground_truth_needs_an_encoder(faces):
    gan = DCGAN(latent_dim=4, channels=[4, 4, 4, 4], image_size=32, image_channels=3)
    with pytest.raises(TypeError, match="encoder"):
        gt.extrapolation_vs_truth(gan, faces, "intermediate", [0])


# ------------------------------------------------------- a generator defined only in this file


class SplitGenerator(nn.Module):
    """latent → 8 maps of 8×8 → tanh → 1×1 conv to RGB (``head.1``). Maps 0-3 live only in
    columns 0-2, maps 4-7 only in columns 5-7: two modules of known extent."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8 * 8 * 8)
        self.head = nn.Sequential(nn.Tanh(), nn.Conv2d(8, 3, kernel_size=1))
        support = torch.zeros(8, 8, 8)
        support[:4, :, :3] = 1.0
        support[4:, :, 5:] = 1.0
        self.register_buffer("support", support)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.fc(z).view(-1, 8, 8, 8) * self.support)


def test_module_discovery_and_targeted_interventions_on_a_foreign_generator():
    torch.manual_seed(0)
    model = SplitGenerator()
    latents = torch.randn(8, 6)
    result, influence = discover_modules(model, "head.1", latents, k=2, n_pairs=16)
    assert influence.shape == (8, 8, 8)
    assert influence[:4, :, 3:].abs().max() == 0 and influence[4:, :, :5].abs().max() == 0
    groups = sorted(sorted(result.members(m)) for m in range(2))
    assert groups == [[0, 1, 2, 3], [4, 5, 6, 7]]
    left = result.members(int(result.assignment[0]))

    rows = targeted_stretch(model, "head.1", left, latents, factor=1.5)
    change = rows["targeted"] - rows["normal"]
    # Stretched about the centre, the left maps stay in columns 0-2: the rest is untouched.
    assert change[..., 3:].abs().max() == 0
    assert change[..., :3].abs().max() > 1e-3
    assert torch.allclose(rows["image"], stretch(rows["normal"], 1.5))
    assert not torch.allclose(rows["level"], rows["targeted"])

    weight = model.head[1].weight.detach().clone()
    fluo = fluo_images(model, "head.1", left, latents, variants=["pink", "green"])
    assert torch.equal(model.head[1].weight, weight)
    for variant in ("pink", "green"):
        change = fluo[variant] - fluo["normal"]
        assert change[..., 3:].abs().max() == 0 and change[..., :3].abs().max() > 1e-3
    assert model.training  # flags restored


# --------------------------------------------------------------------- run_analysis in-process


def test_dcgan_on_faces_skips_what_needs_an_encoder(tmp_path):
    torch.manual_seed(1)
    gan = DCGAN(latent_dim=4, channels=[4, 4, 4, 4], image_size=16, image_channels=3).eval()
    cfg = analyze_cfg([*TINY_ANALYSIS, "data.kind=faces", "ckpt=none.ckpt"])
    result = run_analysis(gan, cfg, tmp_path)
    assert tuple(result) == RESULT_KEYS
    assert json.loads((tmp_path / "analysis.json").read_text()) == result
    assert set(result["sdr"]) == {f"{net}.{lv}" for net in ("generator", "discriminator")
                                  for lv in ("coarse", "intermediate", "fine", "image")}
    assert set(result["modules"]) == {"intermediate", "fine", "image"}
    assert result["modules"]["fine"]["latents"].startswith("probe latents")
    assert set(result["ground_truth"]) == {"alignment"}
    assert any("no encoder" in note for note in result["skipped"])
    for rel in result["figures"].values():
        assert (tmp_path / rel).is_file()


def test_vae_without_masks_needs_a_module_index(tmp_path, vae):
    cfg = analyze_cfg([*TINY_ANALYSIS, "data.kind=none", "ckpt=none.ckpt"])
    result = run_analysis(vae, cfg, tmp_path / "a")
    assert result["targeted"] is None and result["fluo"] is None
    assert result["ground_truth"] is None
    assert any("targeted.module" in note for note in result["skipped"])
    assert "encoder" not in {k.split(".")[0] for k in result["sdr"]}  # no images, no SDR
    cfg = analyze_cfg([*TINY_ANALYSIS, "data.kind=none", "ckpt=none.ckpt",
                       "targeted.module=1", "fluo.module=0"])
    result = run_analysis(vae, cfg, tmp_path / "b")
    assert result["targeted"]["module"] == 1 and result["targeted"]["chosen_by"] == "config"
    assert result["fluo"]["channels"] == sorted(result["fluo"]["channels"])
    assert {"targeted_stretch", "fluo_hair"} <= set(result["figures"])
    with pytest.raises(ValueError, match="targeted.module"):
        run_analysis(vae, analyze_cfg([*TINY_ANALYSIS, "data.kind=none", "ckpt=x",
                                       "targeted.module=7"]), tmp_path / "c")


# ------------------------------------------------------------------------------- end to end


def _run(module: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    return subprocess.run([sys.executable, "-m", module, *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    """A short icm-train run of the β-VAE on synthetic faces (checkpoint + .hydra config)."""
    from conftest import TINY

    root = tmp_path_factory.mktemp("train")
    run_dir = root / "run"
    tiny = [o for o in TINY if not o.startswith("model.image_size=")]
    done = _run("icm.train", [*tiny, "model.image_size=32", "logger=none", "callbacks=none",
                              "data.datamodule.dataset.num_images=64",
                              f"hydra.run.dir={run_dir}"], root)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    return run_dir


def test_icm_analyze_writes_report_json_and_figures(trained_run, tmp_path):
    out = tmp_path / "analysis"
    done = _run("icm.cli.analyze", [f"ckpt={trained_run / 'checkpoints' / 'last.ckpt'}",
                                    *TINY_ANALYSIS, "wandb=true", f"hydra.run.dir={out}"],
                tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "analysis.json").read_text())
    assert tuple(result) == RESULT_KEYS
    assert result["model"] == "BetaVAE"
    assert result["data"]["kind"] == "faces"
    assert result["data"]["source"] == "training run config"
    truth = result["ground_truth"]
    assert set(truth) == {"alignment", "locality", "extrapolation", "fluo"}
    assert set(truth["extrapolation"]["mse"]) == {
        "targeted", "level_stretch", "image_stretch", "reconstruction"}
    assert set(truth["fluo"]["variants"]) == {"pink", "green", "blue"}
    assert {"targeted_stretch", "fluo_pink"} <= set(truth["locality"])
    assert result["targeted"]["level"] == "intermediate" and result["fluo"]["level"] == "image"
    assert result["skipped"] == []
    expected = {"sdr_histograms", "stretch_probe", "stretch_scales", "module_templates",
                "targeted_stretch", "fluo_hair"}
    assert set(result["figures"]) == expected

    report = (out / "report.html").read_text()
    for rel in result["figures"].values():
        png = (out / rel).read_bytes()
        assert png.startswith(b"\x89PNG")
        assert base64.b64encode(png).decode() in report  # embedded, not linked
    assert not re.search(r"(src|href)=\"(?!data:)", report)  # nothing to fetch: offline
    assert "<script" not in report
    assert list((out / "wandb").glob("offline-run-*"))


def test_icm_analyze_bad_checkpoint_fails_with_one_line(tmp_path):
    corrupt = tmp_path / "corrupt.ckpt"
    corrupt.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    done = _run("icm.cli.analyze", [f"ckpt={corrupt}", f"hydra.run.dir={tmp_path / 'out'}"],
                tmp_path)
    assert done.returncode != 0
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(corrupt) in lines[0], done.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override,key", [
    ("ckpt=???", "ckpt: missing"),
    ("ckpt={absent}", "absent.ckpt"),
    ("targeted.level=eyes", "targeted.level"),
    ("fluo.variants=[purple]", "fluo.variants"),
    ("modules.k=0", "modules.k"),
    ("data.kind=celeba", "data.kind"),
    ("expect=transformer", "expect"),
])
def test_validate_names_the_bad_key_in_one_line(override, key, tmp_path):
    from icm.cli.analyze import validate
    from icm.cli.common import UsageError

    # Settings are checked before the checkpoint is read: "ignored" is never opened.
    override = override.format(absent=tmp_path / "absent.ckpt")
    overrides = [override] if override.startswith("ckpt=") else ["ckpt=ignored", override]
    with pytest.raises(UsageError) as exc:
        validate(analyze_cfg(overrides))
    assert key in str(exc.value) and "\n" not in str(exc.value)


def test_probe_latents_are_the_training_diagnostics_draw():
    from icm.callbacks.probe import probe_latents as diagnostics_latents
    from icm.report.analysis import probe_latents

    assert torch.equal(probe_latents(6, 5, seed=3), diagnostics_latents(6, 5, seed=3))
    assert not torch.equal(probe_latents(6, 5, seed=3), probe_latents(6, 5, seed=4))

"""Diagnostics and ImageGrids callbacks, the JSON-lines record helpers and the figures."""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import pytorch_lightning as pl
import torch
from matplotlib.figure import Figure
from PIL import Image
from pytorch_lightning.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from icm.callbacks import Diagnostics, ImageGrids, append_record, read_records, truncate_records
from icm.callbacks.probe import is_active, probe_latents
from icm.interventions import stretch_probe
from icm.report.figures import (
    image_grid,
    save_figure,
    scale_bars,
    sdr_histograms,
    stretch_grid,
    stretch_mse_curves,
)
from icm.spectral import sdr

LATENT, CH, SIZE = 4, 4, 16


# --------------------------------------------------------------------------- tiny model
class TinyDecoder(nn.Module):
    """latent → 4×4 → coarse (8×8) → fine (16×16) → image (16×16, 1 channel)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(LATENT, CH * 4 * 4)
        self.coarse = nn.ConvTranspose2d(CH, CH, 3, stride=2, padding=1, output_padding=1)
        self.fine = nn.ConvTranspose2d(CH, CH, 3, stride=2, padding=1, output_padding=1)
        self.image = nn.ConvTranspose2d(CH, 1, 3, stride=1, padding=1)
        self.bn0, self.bn1, self.bn2 = nn.BatchNorm2d(CH), nn.BatchNorm2d(CH), nn.BatchNorm2d(CH)

    @property
    def levels(self) -> OrderedDict:
        return OrderedDict(coarse=self.coarse, fine=self.fine, image=self.image)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn0(self.fc(z).view(-1, CH, 4, 4)))
        h = torch.relu(self.bn1(self.coarse(h)))
        h = torch.relu(self.bn2(self.fine(h)))
        return torch.tanh(self.image(h))


class TinyEncoder(nn.Module):
    """image (16×16) → fine (8×8) → coarse (4×4) → latent."""

    def __init__(self) -> None:
        super().__init__()
        self.image = nn.Conv2d(1, CH, 3, stride=2, padding=1)
        self.fine = nn.Conv2d(CH, CH, 3, stride=2, padding=1)
        self.coarse = nn.Conv2d(CH, CH, 3, stride=2, padding=1)
        self.bn = nn.BatchNorm2d(CH)
        self.out = nn.Linear(CH * 2 * 2, LATENT)

    @property
    def levels(self) -> OrderedDict:
        return OrderedDict(image=self.image, fine=self.fine, coarse=self.coarse)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.image(x))
        h = torch.relu(self.bn(self.fine(h)))
        return self.out(torch.relu(self.coarse(h)).flatten(1))


class TinyAE(pl.LightningModule):
    """The interface of icm.lit modules: nets, generate, latent_dim, sample, reconstruct."""

    def __init__(self) -> None:
        super().__init__()
        self.decoder, self.encoder = TinyDecoder(), TinyEncoder()
        self.latent_dim = LATENT

    @property
    def nets(self) -> OrderedDict:
        return OrderedDict(decoder=self.decoder, encoder=self.encoder)

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def sample(self, n: int) -> torch.Tensor:
        return self.generate(torch.randn(n, LATENT, device=self.device))

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def training_step(self, batch, batch_idx):
        (x,) = batch
        noise = torch.randn_like(x) * 0.05  # draws from the global RNG on purpose
        loss = (self.reconstruct(x + noise) - x).square().mean()
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, SIZE, SIZE, generator=g) * 2 - 1


class TinyData(pl.LightningDataModule):
    def __init__(self, with_probe_batch: bool = True) -> None:
        super().__init__()
        self.train_x, self.val_x = images(32, 1), images(16, 2)
        if not with_probe_batch:
            self.probe_batch = None

    def train_dataloader(self):
        return DataLoader(TensorDataset(self.train_x), batch_size=8, shuffle=True)

    def val_dataloader(self):
        return DataLoader(TensorDataset(self.val_x), batch_size=5, shuffle=False)

    def probe_batch(self, n: int = 64) -> torch.Tensor:
        return self.val_x[:n].clone()


def fit(callbacks, max_steps, *, model=None, data=None, ckpt_path=None, seed=0):
    pl.seed_everything(seed)
    model = model or TinyAE()
    trainer = pl.Trainer(
        accelerator="cpu", max_steps=max_steps, logger=False, enable_checkpointing=any(
            isinstance(c, ModelCheckpoint) for c in callbacks),
        enable_progress_bar=False, enable_model_summary=False, callbacks=callbacks,
        num_sanity_val_steps=0, limit_val_batches=0,
    )
    trainer.fit(model, datamodule=data or TinyData(), ckpt_path=ckpt_path)
    return trainer, model


def diagnostics(tmp_path: Path, **kwargs) -> Diagnostics:
    options = dict(every_n_steps=2, probe_size=6, seed=0, histogram_bins=10, grid_columns=3)
    options.update(kwargs)
    return Diagnostics(tmp_path, **options)


def causes_by_hand(net: nn.Module, inputs: torch.Tensor) -> dict[str, torch.Tensor]:
    """Inputs of each level's conv in an eval-mode forward (reference for the callback)."""
    seen: dict[str, torch.Tensor] = {}
    handles = [
        conv.register_forward_pre_hook(lambda _m, args, key=key: seen.__setitem__(key, args[0]))
        for key, conv in net.levels.items()
    ]
    was = net.training
    net.eval()
    with torch.no_grad():
        net(inputs)
    net.train(was)
    for handle in handles:
        handle.remove()
    return seen


# --------------------------------------------------------------------------- records
def test_append_and_read_records_round_trip(tmp_path):
    path = tmp_path / "sub" / "r.jsonl"
    first = {"step": 1, "sdr": {"decoder.fine": {"mean": 1.0, "values": [0.5, 1.5]}}}
    append_record(path, first)
    append_record(path, {"step": 2, "stretch": {}})
    assert read_records(path) == [first, {"step": 2, "stretch": {}}]
    assert path.read_text().count("\n") == 2 and path.read_text().endswith("\n")
    with pytest.raises(ValueError, match="NaN"):
        append_record(path, {"step": 3, "x": float("nan")})
    assert len(read_records(path)) == 2  # the refused record left nothing behind
    assert read_records(tmp_path / "missing.jsonl") == []


def test_truncated_last_line_is_dropped_and_repaired(tmp_path):
    path = tmp_path / "r.jsonl"
    for step in (1, 2, 3):
        append_record(path, {"step": step})
    with path.open("a") as handle:  # a write cut short by a crash
        handle.write('{"step": 4, "sdr": {"dec')
    with pytest.warns(UserWarning, match="truncated"):
        assert [r["step"] for r in read_records(path)] == [1, 2, 3]
    assert truncate_records(path) == 1
    assert path.read_text().splitlines() == [json.dumps({"step": s}).replace(" ", "")
                                             for s in (1, 2, 3)]
    assert truncate_records(path) == 0
    # A complete JSON object that lacks its newline was not finished either.
    with path.open("a") as handle:
        handle.write('{"step":5}')
    with pytest.warns(UserWarning):
        assert [r["step"] for r in read_records(path)] == [1, 2, 3]


def test_corrupt_line_before_the_last_raises(tmp_path):
    path = tmp_path / "r.jsonl"
    path.write_text('{"step": 1}\n{"step": \n{"step": 3}\n')
    with pytest.raises(ValueError, match=r"r\.jsonl:2"):
        read_records(path)


def test_truncate_records_keeps_steps_up_to_max(tmp_path):
    path = tmp_path / "r.jsonl"
    for step in (2, 4, 6, 8):
        append_record(path, {"step": step, "v": step * 0.5})
    assert truncate_records(path, max_step=5) == 2
    assert read_records(path) == [{"step": 2, "v": 1.0}, {"step": 4, "v": 2.0}]
    assert not list(tmp_path.glob(".*.tmp"))  # temporary file renamed away


# --------------------------------------------------------------------------- diagnostics
def test_diagnostics_short_run_writes_schema_and_figures(tmp_path):
    cb = diagnostics(tmp_path)
    trainer, model = fit([cb], max_steps=5)
    records = read_records(tmp_path / "diagnostics.jsonl")
    assert [r["step"] for r in records] == [2, 4, 5]  # cadence, then once at the end
    for record in records:
        assert isinstance(record["epoch"], int) and record["time"] > 1e9
        assert set(record["sdr"]) == {
            "decoder.coarse", "decoder.fine", "decoder.image",
            "encoder.image", "encoder.fine", "encoder.coarse",
        }
        for key, stats in record["sdr"].items():
            net, level = key.split(".")
            conv = model.nets[net].levels[level]
            pairs = conv.in_channels * conv.out_channels
            assert stats["n"] + stats["undefined"] == pairs
            assert len(stats["values"]) == stats["n"] > 0
            values = np.array(stats["values"])
            assert np.isfinite(values).all()
            assert stats["mean"] == pytest.approx(values.mean(), rel=1e-4)
            assert stats["median"] == pytest.approx(np.median(values), rel=1e-4)
            assert values.min() <= stats["mode"] <= values.max()
        assert set(record["stretch"]) == {"coarse", "fine", "image"}
        for scores in record["stretch"].values():
            assert math.isfinite(scores["mse"]) and scores["mse"] >= 0
            assert len(scores["energy_per_scale"]) == len(scores["mse_per_scale"]) == 4
            assert all(math.isfinite(v) and v >= 0 for v in scores["mse_per_scale"])

    # The last record is what the pure functions give on the final model and fixed probe:
    # decoder fed the probe latents, encoder the probe images, both in eval mode.
    last = records[-1]
    torch.testing.assert_close(cb.latents, probe_latents(6, LATENT, seed=0))
    torch.testing.assert_close(cb.images, TinyData().probe_batch(6))
    for name, inputs in (("decoder", cb.latents), ("encoder", cb.images)):
        net = model.nets[name]
        causes = causes_by_hand(net, inputs)
        for level, conv in net.levels.items():
            expected = sdr(conv, causes[level]).detach()
            expected = expected[torch.isfinite(expected)].double().numpy()
            got = np.array(last["sdr"][f"{name}.{level}"]["values"])
            np.testing.assert_allclose(got, expected, rtol=1e-5)
    reference = stretch_probe(model.decoder, cb.latents, ["coarse", "fine", "image"],
                              factor=1.5, axis="width", generate=model.generate)
    for level, scores in reference.items():
        assert last["stretch"][level]["mse"] == pytest.approx(scores["mse"], rel=1e-6)
        assert last["stretch"][level]["mse_per_scale"] == pytest.approx(scores["mse_per_scale"])

    figures = tmp_path / "figures"
    for name in ("sdr_histograms", "stretch_grid", "stretch_scales", "stretch_mse"):
        with Image.open(figures / f"{name}_latest.png") as image:
            assert image.size[0] > 100 and image.size[1] > 100
    assert sorted(p.name for p in figures.glob("stretch_grid_step*.png")) == [
        "stretch_grid_step0000002.png", "stretch_grid_step0000004.png",
        "stretch_grid_step0000005.png",
    ]


def test_evaluation_at_the_last_step_is_not_repeated(tmp_path):
    fit([diagnostics(tmp_path, figures=False, stretch=False)], max_steps=4)
    records = read_records(tmp_path / "diagnostics.jsonl")
    assert [r["step"] for r in records] == [2, 4]
    assert all("stretch" not in r for r in records)
    assert not (tmp_path / "figures").exists()


def test_diagnostics_do_not_change_training(tmp_path):
    """Same seed with and without the callbacks (probe drawn by iterating the val
    loader, eval-mode forwards): bitwise the same weights and BN statistics."""
    _, plain = fit([], max_steps=5, data=TinyData(with_probe_batch=False))
    callbacks = [diagnostics(tmp_path, every_n_steps=2, figures=False),
                 ImageGrids(tmp_path, every_n_steps=2, n=4)]
    _, probed = fit(callbacks, max_steps=5, data=TinyData(with_probe_batch=False))
    for (name, a), b in zip(plain.state_dict().items(), probed.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name
    # Without probe_batch, the probe is the first validation images (two batches of 5).
    torch.testing.assert_close(callbacks[0].images, TinyData().val_x[:6])
    assert [r["step"] for r in read_records(tmp_path / "diagnostics.jsonl")] == [2, 4, 5]


def test_resume_drops_records_after_the_checkpoint_and_keeps_the_probe(tmp_path):
    ckpt_dir = tmp_path / "checkpoints"

    def callbacks(seed):
        return [diagnostics(tmp_path, seed=seed, figures=False),
                ModelCheckpoint(dirpath=ckpt_dir, filename="{step}", every_n_train_steps=3,
                                save_top_k=-1)]

    first = callbacks(seed=0)
    fit(first, max_steps=6)
    path = tmp_path / "diagnostics.jsonl"
    before = read_records(path)
    assert [r["step"] for r in before] == [2, 4, 6]
    with path.open("a") as handle:  # an older crash left half a line behind
        handle.write('{"step": 7, "sd')

    second = callbacks(seed=123)  # a different seed: the checkpoint's probe must win
    trainer, _ = fit(second, max_steps=8, ckpt_path=ckpt_dir / "step=3.ckpt")
    assert trainer.global_step == 8
    after = read_records(path)
    assert [r["step"] for r in after] == [2, 4, 6, 8]
    assert after[0] == before[0]  # kept as written
    torch.testing.assert_close(second[0].latents, first[0].latents)
    torch.testing.assert_close(second[0].images, first[0].images)


class FakeTrainer(SimpleNamespace):
    pass


def test_callbacks_do_nothing_on_other_ranks(tmp_path):
    trainer = FakeTrainer(is_global_zero=False, global_step=4, current_epoch=0, loggers=[],
                          datamodule=TinyData())
    assert not is_active(trainer) and is_active(FakeTrainer(is_global_zero=True))
    model = TinyAE()
    for cb in (diagnostics(tmp_path, every_n_steps=1), ImageGrids(tmp_path, every_n_steps=1)):
        cb.on_fit_start(trainer, model)
        cb.on_train_start(trainer, model)
        cb.on_train_batch_end(trainer, model, None, None, 0)
        cb.on_train_end(trainer, model)
        assert cb.latents is None and cb.images is None
    assert list(tmp_path.iterdir()) == []


def test_bad_arguments_name_the_key(tmp_path):
    with pytest.raises(ValueError, match="every_n_steps"):
        Diagnostics(tmp_path, every_n_steps=0)
    with pytest.raises(ValueError, match="intervention.axis"):
        Diagnostics(tmp_path, axis="diagonal")
    with pytest.raises(ValueError, match="intervention.factor"):
        Diagnostics(tmp_path, factor=0)
    with pytest.raises(ValueError, match="probe_size"):
        Diagnostics(tmp_path, probe_size=0)
    with pytest.raises(ValueError, match="n:"):
        ImageGrids(tmp_path, n=0)
    with pytest.raises(ValueError, match="intervention.levels"):
        Diagnostics(tmp_path, levels=[])
    trainer = FakeTrainer(is_global_zero=True, datamodule=TinyData())
    with pytest.raises(ValueError, match=r"intervention.levels: \['intermediate'\]"):
        Diagnostics(tmp_path, levels=["fine", "intermediate"]).on_fit_start(trainer, TinyAE())


# --------------------------------------------------------------------------- image grids
def test_image_grids_write_samples_and_reconstructions(tmp_path):
    cb = ImageGrids(tmp_path, every_n_steps=2, n=5, seed=3)
    _, model = fit([cb], max_steps=3)
    model.eval()
    with torch.no_grad():
        samples = model.generate(probe_latents(5, LATENT, seed=3))
        recon = model.reconstruct(TinyData().probe_batch(5))
    with Image.open(tmp_path / "figures" / "samples.png") as image:
        got = np.array(image)
    np.testing.assert_array_equal(got, image_grid(samples, nrow=3)[..., 0])
    with Image.open(tmp_path / "figures" / "reconstructions.png") as image:
        got = np.array(image)
    # Rows of 3: probe row, its reconstructions, then the short last pair padded black.
    tile = SIZE + 2
    assert got.shape == (4 * tile + 2, 3 * tile + 2)
    first_recon = got[tile + 2 : tile + 2 + SIZE, 2 : 2 + SIZE]
    np.testing.assert_array_equal(first_recon, image_grid(recon[:1])[2:-2, 2:-2, 0])
    assert (got[3 * tile + 2 :, 2 * tile + 2 :] == 0).all()  # padding tile


# --------------------------------------------------------------------------- figures
def test_image_grid_places_tiles_row_major():
    batch = torch.stack([torch.full((3, 2, 2), v) for v in (-1.0, 0.0, 1.0)])
    grid = image_grid(batch, nrow=2, padding=1)
    assert grid.shape == (7, 7, 3) and grid.dtype == np.uint8
    assert (grid[1:3, 1:3] == 0).all()  # -1 → 0
    assert (grid[1:3, 4:6] == 128).all()  # 0 → 127.5 rounds to 128
    assert (grid[4:6, 1:3] == 255).all()  # third image starts the second row
    assert (grid[4:6, 4:6] == 0).all() and (grid[0] == 0).all()  # empty slot, padding


def test_figures_are_built_and_saved(tmp_path):
    rng = np.random.default_rng(0)
    values = {"decoder": {"coarse": rng.normal(1, 0.1, 50), "fine": [np.nan, 1.0, 1.2]},
              "encoder": {"coarse": rng.normal(1, 0.5, 50), "fine": rng.normal(1, 0.5, 9)}}
    fig = sdr_histograms(values, bins=8)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert [ax.get_title() for ax in fig.axes] == ["coarse", "fine"]
    assert len(fig.axes[0].patches) == 16  # 8 bins × 2 nets on shared edges
    rows = [torch.rand(4, 3, 8, 8) * 2 - 1 for _ in range(3)]
    figs = [
        stretch_grid(rows, ["normal", "fine stretched", "stretched image"], columns=2),
        scale_bars({"coarse": [1, 2, 3], "fine": [3, 2, 1]}),
        stretch_mse_curves([{"step": 2, "stretch": {"fine": {"mse": 0.1}}},
                            {"step": 1, "stretch": {"fine": {"mse": 0.2}}}, {"step": 3}]),
    ]
    x, y = figs[2].axes[0].lines[0].get_data()
    assert list(x) == [1, 2] and list(y) == [0.2, 0.1]  # sorted by step
    for i, figure in enumerate([fig, *figs]):
        path = save_figure(figure, tmp_path / f"f{i}.png")
        with Image.open(path) as image:
            assert image.format == "PNG"
    with pytest.raises(ValueError, match="labels"):
        stretch_grid(rows, ["one"])


# --------------------------------------------------------------------------- wandb
@pytest.mark.slow
def test_wandb_gets_scalars_histograms_and_images(tmp_path, monkeypatch):
    wandb = pytest.importorskip("wandb")
    from pytorch_lightning.loggers import WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logger = WandbLogger(save_dir=str(tmp_path), offline=True, project="icm-test")
    logged: list[dict] = []
    real_log = logger.experiment.log

    def capture(payload, *args, **kwargs):
        logged.append(dict(payload))
        return real_log(payload, *args, **kwargs)

    monkeypatch.setattr(logger.experiment, "log", capture)
    try:
        pl.seed_everything(0)
        trainer = pl.Trainer(accelerator="cpu", max_steps=2, logger=logger,
                             enable_checkpointing=False, enable_progress_bar=False,
                             enable_model_summary=False, num_sanity_val_steps=0,
                             limit_val_batches=0, log_every_n_steps=1,
                             callbacks=[diagnostics(tmp_path, every_n_steps=2),
                                        ImageGrids(tmp_path, every_n_steps=2, n=4)])
        trainer.fit(TinyAE(), datamodule=TinyData())
    finally:
        wandb.finish()
    merged = {k: v for payload in logged if payload.get("trainer/global_step") == 2
              for k, v in payload.items()}
    record = read_records(tmp_path / "diagnostics.jsonl")[-1]
    assert merged["sdr/decoder.fine/mean"] == pytest.approx(record["sdr"]["decoder.fine"]["mean"])
    assert merged["stretch/fine/mse"] == pytest.approx(record["stretch"]["fine"]["mse"])
    assert merged["stretch/fine/mse_scale1"] == pytest.approx(
        record["stretch"]["fine"]["mse_per_scale"][0])
    assert isinstance(merged["sdr/encoder.coarse/hist"], wandb.Histogram)
    for key in ("figures/sdr_histograms", "figures/stretch_grid", "images/samples",
                "images/reconstructions"):
        assert isinstance(merged[key], wandb.Image), key


# --------------------------------------------------------------------------- project models
@pytest.mark.parametrize("kind", ["vae", "dcgan"])
def test_diagnostics_on_the_project_models(kind, tmp_path):
    from icm.lit import DCGAN, BetaVAE

    small = dict(latent_dim=LATENT, channels=(4, 4, 4, 4), image_size=16, image_channels=1)
    model = BetaVAE(**small) if kind == "vae" else DCGAN(**small)
    sides = ("decoder", "encoder") if kind == "vae" else ("generator", "discriminator")
    trainer, model = fit([diagnostics(tmp_path, figures=False)], max_steps=2, model=model)
    (record,) = read_records(tmp_path / "diagnostics.jsonl")
    assert record["step"] == trainer.global_step == 2
    levels = ("coarse", "intermediate", "fine", "image")
    assert set(record["sdr"]) == {f"{side}.{level}" for side in sides for level in levels}
    assert set(record["stretch"]) == set(levels)
    # Wavelet scales of a 16×16 image: J = log2(16) = 4.
    assert all(len(s["mse_per_scale"]) == 4 for s in record["stretch"].values())

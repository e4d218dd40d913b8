"""Tests of the Lightning modules (icm.lit): losses against hand computations, step counting,
the SDR regularizer (eq. 17) in its modes, checkpoints and the Hydra model configs."""

from __future__ import annotations

import functools
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from icm import spectral
from icm.layers import record_causes
from icm.lit import DCGAN, BetaVAE, SDRRegularizer, regularizer_config
from icm.lit.losses import discriminator_loss, gaussian_kl, generator_loss, vae_loss
from icm.nets import Decoder

CONF = Path(__file__).resolve().parents[1] / "conf"
TINY = {"latent_dim": 8, "channels": (8, 8, 8, 8), "image_size": 16}
LEVELS = ["image", "fine", "intermediate"]


def sdr_config(mode: str = "alternate", weight: float = 1.0, lr: float = 3e-3) -> dict:
    return {"mode": mode, "weight": weight, "levels": list(LEVELS), "lr": lr}


def images(n: int = 16, channels: int = 3, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 16, 16, generator=g) * 2 - 1


def trainer(**kwargs) -> pl.Trainer:
    args = dict(
        accelerator="cpu",
        max_steps=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    args.update(kwargs)
    return pl.Trainer(**args)


class Recorder(pl.Callback):
    """Counts training batches and keeps a logged metric after each one."""

    def __init__(self, key: str | None = None) -> None:
        self.key, self.batches, self.values = key, 0, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.batches += 1
        if self.key is not None:
            self.values.append(float(trainer.callback_metrics[self.key]))


def probe_penalty(decoder: Decoder, z: torch.Tensor) -> float:
    """Σ eq. 17 penalty of LEVELS on causes recorded from latents ``z`` (an independent path
    through icm.layers and icm.spectral)."""
    with torch.no_grad(), record_causes(decoder, LEVELS) as causes:
        decoder(z)
    with torch.no_grad():
        return sum(float(spectral.sdr_penalty(decoder.levels[n], causes[n])) for n in LEVELS)


# --- losses -------------------------------------------------------------------------------


def test_vae_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(1)
    x, x_hat = torch.randn(3, 2, 4, 5, generator=g), torch.randn(3, 2, 4, 5, generator=g)
    mu, logvar = torch.randn(3, 6, generator=g), torch.randn(3, 6, generator=g)
    terms = vae_loss(x_hat, x, mu, logvar, beta=0.25)
    sq, kl = 0.0, 0.0
    for b in range(3):
        for v in (x_hat[b] - x[b]).flatten().tolist():
            sq += v * v
        for j in range(6):
            m, lv = mu[b, j].item(), logvar[b, j].item()
            kl += 0.5 * (m * m + torch.e**lv - lv - 1.0)
    recon = sq / (3 * 2 * 4 * 5)  # per-pixel, per-channel mean, then batch mean
    kl = kl / 3  # summed over latents, averaged over the batch
    assert terms["recon"].item() == pytest.approx(recon, rel=1e-5)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-5)
    assert terms["loss"].item() == pytest.approx(recon + 0.25 * kl, rel=1e-5)


def test_kl_is_nonnegative_and_matches_torch_distributions():
    g = torch.Generator().manual_seed(2)
    for _ in range(20):
        mu, logvar = torch.randn(5, 7, generator=g) * 3, torch.randn(5, 7, generator=g) * 2
        kl = gaussian_kl(mu, logvar)
        post = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
        ref = torch.distributions.kl_divergence(post, torch.distributions.Normal(0.0, 1.0))
        assert kl.item() >= 0
        assert kl.item() == pytest.approx(ref.sum(1).mean().item(), rel=1e-5)
    assert gaussian_kl(torch.zeros(4, 3), torch.zeros(4, 3)).item() == 0.0


def test_gan_losses_match_log_sigmoid():
    real, fake = torch.tensor([2.0, -1.0]), torch.tensor([0.5, -3.0])
    sig = torch.sigmoid
    d_ref = -(torch.log(sig(real)).mean() + torch.log(1 - sig(fake)).mean())
    assert discriminator_loss(real, fake).item() == pytest.approx(d_ref.item(), rel=1e-6)
    assert generator_loss(fake).item() == pytest.approx(-torch.log(sig(fake)).mean().item())


# --- BetaVAE ------------------------------------------------------------------------------


def test_beta_vae_loss_terms_match_hand_computation():
    torch.manual_seed(0)
    model = BetaVAE(beta=0.3, **TINY).eval()
    x = images(4)
    with torch.no_grad():
        terms = model.loss_terms(x, generator=torch.Generator().manual_seed(5))
        mu, logvar = model.encoder(x)
        eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(5))
        x_hat = model.decoder(mu + torch.exp(0.5 * logvar) * eps)
    recon = ((x_hat - x) ** 2).mean()
    kl = (0.5 * (mu**2 + logvar.exp() - logvar - 1)).sum(1).mean()
    assert set(terms) == {"loss", "recon", "kl"}
    torch.testing.assert_close(terms["recon"], recon)
    torch.testing.assert_close(terms["kl"], kl)
    torch.testing.assert_close(terms["loss"], recon + 0.3 * kl)


def test_beta_zero_leaves_only_recon_and_negative_beta_raises():
    model = BetaVAE(beta=0.0, **TINY)
    terms = model.loss_terms(images(4))
    assert terms["kl"].item() > 0
    assert terms["loss"].item() == terms["recon"].item()
    with pytest.raises(ValueError, match="model.beta"):
        BetaVAE(beta=-0.1, **TINY)


def test_beta_vae_interface():
    model = BetaVAE(**TINY).eval()
    assert list(model.nets) == ["decoder", "encoder"]
    assert model.nets["decoder"] is model.decoder and model.latent_dim == 8
    assert "decoder.fine" in dict(model.named_modules())
    x = images(3)
    mu, logvar = model.encode(x)
    assert mu.shape == logvar.shape == (3, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.reconstruct(x), model.decoder(mu))
        s1 = model.sample(5, generator=torch.Generator().manual_seed(3))
        s2 = model.sample(5, generator=torch.Generator().manual_seed(3))
        z = torch.randn(2, 8)
        torch.testing.assert_close(model(z), model.generate(z))
    assert s1.shape == (5, 3, 16, 16) and s1.abs().max() <= 1
    torch.testing.assert_close(s1, s2)
    with pytest.raises(ValueError, match="n must be"):
        model.sample(0)


def test_beta_vae_trains_logs_and_counts_batches():
    torch.manual_seed(0)
    model = BetaVAE(**TINY)
    rec = Recorder("train/loss")
    tr = trainer(max_steps=3, limit_val_batches=1, val_check_interval=3, callbacks=[rec])
    tr.fit(model, DataLoader(images(), batch_size=4), DataLoader(images(8, seed=1), batch_size=4))
    assert tr.global_step == rec.batches == 3
    for key in ("train/recon", "train/kl", "val/loss", "val/recon", "val/kl"):
        assert torch.isfinite(tr.callback_metrics[key])
    assert tr.callback_metrics["train/kl"] >= 0
    assert "train/sdr_penalty" not in tr.callback_metrics  # mode none
    assert model.sdr_regularizer.optimizer is None


# --- DCGAN --------------------------------------------------------------------------------


def test_dcgan_global_step_equals_batches_and_both_nets_learn():
    torch.manual_seed(0)
    model = DCGAN(image_channels=1, **TINY)
    assert list(model.nets) == ["generator", "discriminator"] and not model.automatic_optimization
    g0 = model.generator.fine.weight.detach().clone()
    d0 = model.discriminator.fine.weight.detach().clone()
    rec = Recorder("train/loss_d")
    data = DataLoader(images(20, channels=1), batch_size=4)  # 5 batches
    tr = trainer(max_steps=-1, max_epochs=1, callbacks=[rec])
    tr.fit(model, data)
    assert rec.batches == 5 and tr.global_step == 5
    assert not torch.equal(model.generator.fine.weight, g0)
    assert not torch.equal(model.discriminator.fine.weight, d0)
    # the discriminator's Adam stepped once per batch, like the generator's
    opt_g, opt_d = tr.optimizers
    assert int(opt_d.state[model.discriminator.fine.weight]["step"]) == 5
    assert int(opt_g.state[model.generator.fine.weight]["step"]) == 5
    assert "train/loss_g" in tr.callback_metrics

    # max_steps means batches: 3 steps run 3 batches (not 2, as two counted steps would)
    model, rec = DCGAN(image_channels=1, **TINY), Recorder()
    tr = trainer(max_steps=3, limit_val_batches=1, val_check_interval=3, callbacks=[rec])
    tr.fit(model, data, DataLoader(images(8, channels=1), batch_size=4))
    assert rec.batches == 3 and tr.global_step == 3
    assert torch.isfinite(tr.callback_metrics["val/loss_d"])
    assert torch.isfinite(tr.callback_metrics["val/loss_g"])


def test_dcgan_interface():
    model = DCGAN(image_channels=1, **TINY).eval()
    with torch.no_grad():
        s = model.sample(3)
    assert s.shape == (3, 1, 16, 16) and model.latent_dim == 8


# --- SDR regularizer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "key", "allowed"),
    [
        ({"mode": "sometimes"}, "regularizer.mode", "alternate"),
        ({"mode": "joint", "levels": ["fine", "pixel"]}, "regularizer.levels", "intermediate"),
        ({"mode": "joint", "levels": []}, "regularizer.levels", "at least one"),
        ({"weight": -1.0}, "regularizer.weight", ">= 0"),
        ({"lr": 0.0}, "regularizer.lr", "> 0"),
        ({"strength": 1.0}, "regularizer", "allowed"),
    ],
)
def test_bad_regularizer_config_raises(config, key, allowed):
    with pytest.raises(ValueError, match=key) as info:
        BetaVAE(regularizer=config, **TINY)
    assert allowed in str(info.value)
    assert len(str(info.value).splitlines()) == 1


def test_regularizer_config_defaults():
    assert regularizer_config(None) == {"mode": "none", "weight": 0.0, "levels": [], "lr": 1e-4}
    cfg = regularizer_config(OmegaConf.create({"mode": "joint", "levels": ["fine"]}))
    assert cfg == {"mode": "joint", "weight": 0.0, "levels": ["fine"], "lr": 1e-4}
    assert type(cfg["levels"]) is list


def test_joint_adds_weighted_penalty_to_the_loss():
    torch.manual_seed(0)
    weight = 2.5
    joint = BetaVAE(regularizer=sdr_config("joint", weight), **TINY).eval()
    plain = BetaVAE(**TINY).eval()
    plain.load_state_dict(joint.state_dict())
    x = images(4)
    terms = joint.loss_terms(x, generator=torch.Generator().manual_seed(7))
    base = plain.loss_terms(x, generator=torch.Generator().manual_seed(7))
    # independent reference: record the decoder's causes for the same latents, eq. 17 per level
    mu, logvar = plain.encode(x)
    eps = torch.randn(mu.shape, generator=torch.Generator().manual_seed(7))
    with record_causes(plain.decoder, LEVELS) as causes:
        plain.decoder(mu + torch.exp(0.5 * logvar) * eps)
    penalty = sum(spectral.sdr_penalty(plain.decoder.levels[n], causes[n]) for n in LEVELS)
    assert penalty.item() > 0
    torch.testing.assert_close(terms["sdr_penalty"], penalty)
    torch.testing.assert_close(terms["loss"], base["loss"] + weight * penalty)
    # the penalty's gradient reaches the regularized kernels only
    terms["loss"].backward()
    base["loss"].backward()
    assert not torch.allclose(joint.decoder.fine.weight.grad, plain.decoder.fine.weight.grad)
    torch.testing.assert_close(joint.decoder.coarse.weight.grad, plain.decoder.coarse.weight.grad)


def test_joint_mode_logs_penalty_in_training():
    model = DCGAN(image_channels=1, regularizer=sdr_config("joint", 1.0), **TINY)
    tr = trainer(max_steps=2)
    tr.fit(model, DataLoader(images(8, channels=1), batch_size=4))
    assert tr.callback_metrics["train/sdr_penalty"] > 0
    assert tr.global_step == 2


def test_alternate_decreases_penalty_with_vae_frozen():
    """VAE learning rate 0: only the regularizer's steps move the chosen kernels."""
    torch.manual_seed(0)
    frozen = functools.partial(torch.optim.SGD, lr=0.0)
    model = BetaVAE(optimizer=frozen, regularizer=sdr_config(lr=3e-3), **TINY)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    z = torch.randn(16, 8)
    p0 = probe_penalty(model.decoder, z)
    rec = Recorder("train/sdr_penalty")
    tr = trainer(max_steps=8, callbacks=[rec])
    tr.fit(model, DataLoader(images(8), batch_size=8))
    assert tr.global_step == rec.batches == 8  # regularizer steps are not counted
    assert len(rec.values) == 8
    assert rec.values[-1] < 0.3 * rec.values[0]
    assert probe_penalty(model.decoder, z) < 0.3 * p0
    after = model.state_dict()
    moved = {k for k in before if "running" not in k and "batches" not in k}
    moved = {k for k in moved if not torch.equal(before[k], after[k])}
    assert moved == {f"decoder.{level}.weight" for level in LEVELS}


def test_alternate_limits_penalty_while_training_vae():
    def penalty_after(config):
        torch.manual_seed(0)
        model = BetaVAE(regularizer=config, **TINY)
        trainer(max_steps=6).fit(model, DataLoader(images(8), batch_size=8))
        return probe_penalty(model.decoder, torch.randn(16, 8, generator=torch.Generator()))

    assert penalty_after(sdr_config(lr=3e-3)) < 0.5 * penalty_after(None)


def test_regularizer_step_keeps_existing_gradients():
    dec = Decoder(8, (8, 8, 8, 8), 3, 16)
    reg = SDRRegularizer(dec, sdr_config())
    for p in dec.parameters():
        p.grad = torch.full_like(p, 0.5)
    assert reg.step() is None  # nothing recorded yet
    with reg.record() as causes:
        dec(torch.randn(4, 8))
    assert set(causes) == set(LEVELS)
    before = dec.fine.weight.detach().clone()
    value = reg.step()
    assert value is not None and value.item() > 0
    assert not torch.equal(dec.fine.weight, before)
    assert all(torch.all(p.grad == 0.5) for p in dec.parameters())
    assert reg.step() is None  # causes are used once


# --- checkpoints and configs ---------------------------------------------------------------


def _adam_steps(reg: SDRRegularizer) -> list[int]:
    return [int(s["step"]) for s in reg.optimizer.state_dict()["state"].values()]


@pytest.mark.parametrize("cls", [BetaVAE, DCGAN])
def test_checkpoint_weights_only_and_regularizer_state_roundtrip(tmp_path, cls):
    torch.manual_seed(0)
    channels = 3 if cls is BetaVAE else 1
    kwargs = dict(TINY, image_channels=channels, regularizer=sdr_config())
    model = cls(**kwargs)
    data = DataLoader(images(8, channels=channels), batch_size=4)
    tr = trainer(max_steps=2)
    tr.fit(model, data)
    path = tmp_path / "last.ckpt"
    tr.save_checkpoint(path)

    ckpt = torch.load(path, weights_only=True)
    assert ckpt["hyper_parameters"]["channels"] == [8, 8, 8, 8]
    assert ckpt["hyper_parameters"]["regularizer"] == sdr_config()
    assert not any(k.startswith("optimizer") for k in ckpt["hyper_parameters"])
    assert _adam_steps(model.sdr_regularizer) == [2, 2, 2]

    loaded = cls.load_from_checkpoint(path)
    want = model.sdr_regularizer.optimizer.state_dict()["state"]
    got = loaded.sdr_regularizer.optimizer.state_dict()["state"]
    assert want.keys() == got.keys()
    for i in want:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            torch.testing.assert_close(got[i][name], want[i][name])

    # resuming continues the step count and the regularizer's optimizer state
    resumed = cls(**kwargs)
    tr = trainer(max_steps=3)
    tr.fit(resumed, data, ckpt_path=path)
    assert tr.global_step == 3
    assert _adam_steps(resumed.sdr_regularizer) == [3, 3, 3]


def _compose(model: str, regularizer: str, channels: int):
    cfg = OmegaConf.create(
        {
            "data": {"channels": channels},
            "regularizer": OmegaConf.load(CONF / "regularizer" / f"{regularizer}.yaml"),
            "model": OmegaConf.load(CONF / "model" / f"{model}.yaml"),
        }
    )
    cfg.model.latent_dim, cfg.model.channels, cfg.model.image_size = 8, [8, 8, 8, 8], 16
    return cfg


def test_model_configs_instantiate():
    vae = instantiate(_compose("vae", "sdr", 3).model)
    assert isinstance(vae, BetaVAE) and vae.beta == 0.0005
    assert vae.sdr_regularizer.mode == "alternate" and vae.sdr_regularizer.levels == LEVELS
    assert vae.hparams.regularizer == sdr_config(lr=1e-4)
    opt = vae.configure_optimizers()
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == 1e-3 and tuple(opt.defaults["betas"]) == (0.5, 0.999)

    gan = instantiate(_compose("dcgan", "none", 1).model)
    assert isinstance(gan, DCGAN) and gan.sdr_regularizer.mode == "none"
    assert gan.generator.image_channels == 1
    opt_g, opt_d = gan.configure_optimizers()
    assert opt_g.defaults["lr"] == opt_d.defaults["lr"] == 2e-4
    full = OmegaConf.load(CONF / "model" / "dcgan.yaml")
    assert full.image_size == 32 and list(full.channels) == [128, 64, 32, 16]


DDP_SCRIPT = """
import functools, sys
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader
from icm.lit import DCGAN, BetaVAE


class Report(pl.Callback):
    def on_train_end(self, trainer, module):
        kernel = module.nets[module.generator_name].fine.weight.detach()
        kernels = trainer.strategy.all_gather(kernel)
        if trainer.is_global_zero:
            gap = float((kernels[0] - kernels[1]).abs().max())
            print("RESULT", type(module).__name__, trainer.global_step, gap, flush=True)


if __name__ == "__main__":
    torch.set_num_threads(1)
    torch.manual_seed(0)
    config = {"mode": "alternate", "weight": 1.0, "levels": ["image", "fine"], "lr": 1e-2}
    tiny = {"latent_dim": 8, "channels": (8, 8, 8, 8), "image_size": 16}
    frozen = functools.partial(torch.optim.SGD, lr=0.0)
    for model, channels in [
        (BetaVAE(image_channels=3, optimizer=frozen, regularizer=config, **tiny), 3),
        (DCGAN(image_channels=1, regularizer=config, **tiny), 1),
    ]:
        data = DataLoader(torch.rand(32, channels, 16, 16) * 2 - 1, batch_size=4)
        trainer = pl.Trainer(
            accelerator="cpu", devices=2, strategy="ddp_find_unused_parameters_true",
            max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, callbacks=[Report()],
        )
        trainer.fit(model, data)
"""


@pytest.mark.slow
def test_alternate_steps_agree_across_ddp_processes(tmp_path):
    """Each process records causes from its own data shard; the regularizer's gradients are
    averaged over processes, so the kernels stay equal (they drift apart without it)."""
    script = tmp_path / "ddp_job.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
    results = [line.split() for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert [(r[1], int(r[2])) for r in results] == [("BetaVAE", 3), ("DCGAN", 3)]
    assert all(float(r[3]) == 0.0 for r in results)

"""Safe checkpoint loading: round trips of both model kinds, and one-line errors for missing,
truncated, random, foreign, code-carrying and wrong-kind files (no code runs on load)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, TensorDataset

from icm.lit import DCGAN, BetaVAE
from icm.lit.checkpoint import CheckpointError, load_module

TINY = {"latent_dim": 4, "channels": [4, 4, 4, 4], "image_size": 16}


def _fit_and_save(module: pl.LightningModule, channels: int, path: Path) -> Path:
    data = DataLoader(TensorDataset(torch.rand(8, channels, 16, 16) * 2 - 1), batch_size=4)
    trainer = pl.Trainer(
        max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(module, data)
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    vae = BetaVAE(**TINY, image_channels=3, beta=0.01)
    gan = DCGAN(**TINY, image_channels=1)
    return {
        "vae": _fit_and_save(vae, 3, root / "vae.ckpt"),
        "dcgan": _fit_and_save(gan, 1, root / "dcgan.ckpt"),
    }


def _one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> str:
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message
    return message


@pytest.mark.parametrize("kind,cls", [("vae", BetaVAE), ("dcgan", DCGAN)])
def test_round_trip_gives_the_same_module_in_eval_mode(checkpoints, kind, cls):
    stored = torch.load(checkpoints[kind], map_location="cpu", weights_only=True)
    module = load_module(checkpoints[kind])
    assert type(module) is cls and not module.training
    assert all(not m.training for m in module.modules())
    assert dict(module.hparams) == stored["hyper_parameters"]
    state = module.state_dict()
    assert set(state) == set(stored["state_dict"])
    for key, value in stored["state_dict"].items():
        assert torch.equal(state[key], value), key
    # The loaded generator is the trained one: same images as a module filled by hand.
    reference = cls(**stored["hyper_parameters"])
    reference.load_state_dict(stored["state_dict"])
    z = torch.randn(3, TINY["latent_dim"])
    with torch.no_grad():
        assert torch.equal(module.generate(z), reference.eval().generate(z))
    assert load_module(checkpoints[kind], expect=kind).__class__ is cls
    assert load_module(checkpoints[kind], expect=cls).__class__ is cls


@pytest.mark.parametrize("kind,other", [("vae", "dcgan"), ("dcgan", "vae")])
def test_other_model_kind_is_refused_with_expect(checkpoints, kind, other):
    with pytest.raises(CheckpointError) as exc:
        load_module(checkpoints[kind], expect=other)
    message = _one_line_naming(exc, checkpoints[kind])
    assert {"vae": "BetaVAE", "dcgan": "DCGAN"}[other] in message


def test_bad_expect_value_is_a_clear_error(checkpoints):
    with pytest.raises(ValueError, match="expect"):
        load_module(checkpoints["vae"], expect="transformer")


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.5, 0.999])
def test_truncated_file(checkpoints, tmp_path, fraction):
    data = checkpoints["vae"].read_bytes()
    path = tmp_path / "truncated.ckpt"
    path.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(CheckpointError) as exc:
        load_module(path)
    assert "truncated or corrupt" in _one_line_naming(exc, path)


def test_damaged_tensor_bytes_fail_the_crc_check(checkpoints, tmp_path):
    data = bytearray(checkpoints["vae"].read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(255 - b for b in data[middle : middle + 64])
    path = tmp_path / "damaged.ckpt"
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as exc:
        load_module(path)
    assert "corrupt" in _one_line_naming(exc, path)


@pytest.mark.parametrize("content", [b"", bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\n" + b"0" * 64])
def test_empty_random_and_foreign_bytes(tmp_path, content):
    path = tmp_path / "foreign.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as exc:
        load_module(path)
    _one_line_naming(exc, path)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(CheckpointError, match="no such file"):
        load_module(tmp_path / "absent.ckpt")
    with pytest.raises(CheckpointError, match="not a file"):
        load_module(tmp_path)


class _WritesMarker:
    """Unpickling this object calls ``open(marker, "w")``: it creates a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_code_carrying_pickle_is_refused_and_never_run(tmp_path, protocol):
    marker = tmp_path / "marker"
    payload = {"state_dict": {}, "hyper_parameters": {}, "x": _WritesMarker(marker)}
    # The payload is live: plain unpickling creates the marker file.
    pickle.loads(pickle.dumps(payload, protocol=protocol)).get("x").close()
    assert marker.exists()
    marker.unlink()

    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps(payload, protocol=protocol))
    zipped = tmp_path / "zipped.ckpt"
    torch.save(payload, zipped)  # torch's zip format, same object inside
    for path in (raw, zipped):
        with pytest.raises(CheckpointError) as exc:
            load_module(path)
        _one_line_naming(exc, path)
        assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused"):
        load_module(zipped)


def test_a_valid_torch_file_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="not a Lightning checkpoint"):
        load_module(path)
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"layer.weight": torch.zeros(2)}, "hyper_parameters": {}}, path)
    with pytest.raises(CheckpointError, match="not a BetaVAE or DCGAN"):
        load_module(path)


def test_unknown_hyper_parameter_and_mismatched_weights(checkpoints, tmp_path):
    stored = torch.load(checkpoints["vae"], map_location="cpu", weights_only=True)

    bad_hparams = dict(stored, hyper_parameters={**stored["hyper_parameters"], "depth": 7})
    path = tmp_path / "hparams.ckpt"
    torch.save(bad_hparams, path)
    with pytest.raises(CheckpointError) as exc:
        load_module(path)
    assert "depth" in _one_line_naming(exc, path)

    rejected = dict(stored, hyper_parameters={**stored["hyper_parameters"], "beta": -1.0})
    path = tmp_path / "rejected.ckpt"
    torch.save(rejected, path)
    with pytest.raises(CheckpointError, match="beta"):
        load_module(path)

    wrong_size = dict(stored, hyper_parameters={**stored["hyper_parameters"], "latent_dim": 5})
    path = tmp_path / "size.ckpt"
    torch.save(wrong_size, path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_module(path)

    state = dict(stored["state_dict"])
    state.pop(next(iter(state)))
    path = tmp_path / "missing_key.ckpt"
    torch.save(dict(stored, state_dict=state), path)
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_module(path)

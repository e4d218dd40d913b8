"""Tests of icm.data: synthetic faces, LFW, image folders, CelebA, the DataModule, the configs."""

from __future__ import annotations

import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image
from scipy.ndimage import binary_dilation, binary_erosion
from torch.utils.data import DataLoader

import icm.data.faces as faces_module
from icm.data import (
    FLUO_HAIR,
    HAIR_PALETTE,
    PART_NAMES,
    CelebA,
    FaceRanges,
    ImageDataModule,
    ImageFolder,
    LFWFaces,
    SyntheticFaces,
    extrapolate,
    render,
    sample_factors,
)

CONF = Path(__file__).resolve().parents[1] / "conf" / "data"
PART = {name: i for i, name in enumerate(PART_NAMES)}


# --------------------------------------------------------------------------- factors


def test_sample_factors_deterministic_seeded_and_in_range():
    a, b, c = sample_factors(50, 1), sample_factors(50, 1), sample_factors(50, 2)
    ranges = FaceRanges()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
        assert not np.array_equal(a[name], c[name]), name
    for name in faces_module.SCALAR_FACTORS:
        low, high = getattr(ranges, name)
        assert a[name].shape == (50,)
        assert np.all((a[name] >= low - 1e-6) & (a[name] <= high + 1e-6)), name
    low, high = ranges.background_colour
    assert np.all((a["background_colour"] >= low - 1e-6) & (a["background_colour"] <= high + 1e-6))
    # A prefix does not depend on how many faces are drawn.
    short = sample_factors(7, 1)
    for name in a:
        np.testing.assert_array_equal(short[name], a[name][:7])


def test_training_hair_is_natural_and_fluo_hair_is_not():
    palette = np.asarray(list(HAIR_PALETTE.values()))
    jitter = FaceRanges().hair_jitter
    hair = sample_factors(500, 0)["hair_colour"]
    nearest = np.abs(hair[:, None, :] - palette[None]).max(axis=2).min(axis=1)
    assert np.all(nearest <= jitter + 1e-6)
    # Every palette colour is used.
    assert len({int(np.argmin(np.abs(h - palette).max(axis=1))) for h in hair}) == len(palette)
    for name, colour in FLUO_HAIR.items():
        distance = np.linalg.norm(palette - np.asarray(colour), axis=1).min()
        assert distance > 0.3 + jitter * np.sqrt(3), name


# --------------------------------------------------------------------------- rendering


@pytest.mark.parametrize("size", [64, 32, 16])
def test_render_shapes_range_determinism_and_partition(size):
    factors = sample_factors(12, 3)
    images, masks = render(factors, size)
    assert images.shape == (12, 3, size, size) and images.dtype == torch.float32
    assert masks.shape == (12, len(PART_NAMES), size, size) and masks.dtype == torch.bool
    assert images.min() >= -1.0 and images.max() <= 1.0
    # Each pixel belongs to exactly one part.
    assert torch.equal(masks.sum(dim=1), torch.ones(12, size, size, dtype=torch.long))
    again_images, again_masks = render(factors, size)
    assert torch.equal(images, again_images) and torch.equal(masks, again_masks)
    other, _ = render(sample_factors(12, 4), size)
    assert (other - images).abs().mean() > 0.05
    # Every face shows background, hair and face at any size.
    for part in ("background", "hair", "face"):
        assert masks[:, PART[part]].flatten(1).any(dim=1).all(), part


def test_masks_agree_with_colours():
    """Interior pixels of a part have that part's colour (independent colour reference)."""
    factors = sample_factors(8, 5)
    images, masks = render(factors, 64)
    anchors = np.linspace(0, 1, len(faces_module.SKIN_TONES))
    table = np.asarray(faces_module.SKIN_TONES)
    for i in range(8):
        skin = np.array(
            [np.interp(factors["skin_tone"][i], anchors, table[:, c]) for c in range(3)]
        )
        for part, colour in (
            ("background", factors["background_colour"][i]),
            ("face", skin),
            ("hair", factors["hair_colour"][i]),
        ):
            interior = binary_erosion(masks[i, PART[part]].numpy(), iterations=2)
            assert interior.sum() > 20, part
            pixels = images[i].numpy()[:, interior]
            expected = np.asarray(colour, dtype=np.float32)[:, None] * 2 - 1
            np.testing.assert_allclose(pixels, np.broadcast_to(expected, pixels.shape), atol=1e-5)
    # Eyes (enlarged to hold interior pixels) show the white of the eye and the iris.
    images, masks = render(extrapolate(factors, eye_size=3.0), 64)
    for i in range(8):
        eyes = images[i].numpy()[:, masks[i, PART["eyes"]].numpy()].T
        for colour in (faces_module._SCLERA, faces_module._IRIS):
            expected = np.asarray(colour, dtype=np.float32) * 2 - 1
            assert np.any(np.abs(eyes - expected).max(axis=1) < 1e-5)


def test_eye_spacing_change_moves_only_pixels_near_the_eyes():
    factors = sample_factors(6, 7)
    wide = extrapolate(factors, eye_spacing=1.5)
    before, masks_before = render(factors, 64)
    after, masks_after = render(wide, 64)
    for i in range(6):
        changed = (after[i] - before[i]).abs().amax(dim=0).numpy() > 1e-6
        eyes = (masks_before[i, PART["eyes"]] | masks_after[i, PART["eyes"]]).numpy()
        assert changed.sum() > 20
        assert not np.any(changed & ~binary_dilation(eyes, iterations=2))
        # Hair, mouth and background masks do not move; face only where the eyes moved.
        for part in ("background", "hair", "mouth"):
            assert torch.equal(masks_before[i, PART[part]], masks_after[i, PART[part]]), part


def test_extrapolated_eye_spacing_scales_the_eye_distance():
    factors = sample_factors(6, 11)
    ratios = []
    for scale in (1.0, 1.5):
        _, masks = render(extrapolate(factors, eye_spacing=scale), 64)
        distances = []
        for i in range(6):
            rows, cols = np.nonzero(masks[i, PART["eyes"]].numpy())
            centre = (factors["pos_x"][i] + 1) * 32 - 0.5  # face centre column, in pixels
            left, right = cols[cols < centre].mean(), cols[cols > centre].mean()
            assert abs((left + right) / 2 - centre) < 0.75  # symmetric about the face centre
            distances.append(right - left)
        ratios.append(np.asarray(distances))
    np.testing.assert_allclose(ratios[1] / ratios[0], 1.5, atol=0.06)


def test_extrapolate_multiplies_scalars_replaces_colours_and_copies():
    factors = sample_factors(4, 0)
    saved = {k: v.copy() for k, v in factors.items()}
    out = extrapolate(factors, eye_spacing=1.5, hair_colour=FLUO_HAIR["pink"])
    np.testing.assert_allclose(out["eye_spacing"], 1.5 * saved["eye_spacing"], rtol=1e-6)
    np.testing.assert_allclose(out["hair_colour"], np.tile(FLUO_HAIR["pink"], (4, 1)), rtol=1e-6)
    for name in faces_module.FACTOR_NAMES:
        np.testing.assert_array_equal(factors[name], saved[name])  # input untouched
        if name not in ("eye_spacing", "hair_colour"):
            np.testing.assert_array_equal(out[name], saved[name])
    with pytest.raises(ValueError, match="nose_length"):
        extrapolate(factors, nose_length=2.0)
    with pytest.raises(ValueError, match="hair_colour"):
        extrapolate(factors, hair_colour=(1.0, 0.0))


def test_fluo_hair_recolours_only_the_hair():
    factors = sample_factors(6, 2)
    before, masks_before = render(factors, 64)
    after, masks_after = render(extrapolate(factors, hair_colour=FLUO_HAIR["green"]), 64)
    assert torch.equal(masks_before, masks_after)  # the haircut keeps its shape
    green = torch.tensor(FLUO_HAIR["green"]).view(3, 1) * 2 - 1
    for i in range(6):
        hair = masks_before[i, PART["hair"]].numpy()
        changed = (after[i] - before[i]).abs().amax(dim=0).numpy() > 1e-6
        # Anti-aliased edges (and corners where two ramps meet) reach two pixels out.
        assert not np.any(changed & ~binary_dilation(hair, iterations=2))
        interior = torch.from_numpy(binary_erosion(hair, iterations=2))
        torch.testing.assert_close(after[i][:, interior], green.expand(3, int(interior.sum())))


def test_banded_small_parts_equal_full_image_computation(monkeypatch):
    """Eyes and mouth are computed on a band of rows; the full-image result is the same."""
    factors = sample_factors(40, 9)
    cases = [
        factors,
        extrapolate(factors, eye_spacing=1.5, eye_size=1.8, mouth_width=1.6),
        extrapolate(factors, mouth_width=0.02, eye_size=0.2),  # a needle-thin mouth
    ]
    banded = [render(c, s) for c in cases for s in (64, 16)]
    monkeypatch.setattr(faces_module._Canvas, "rows_of", lambda self, cy, ax, ay: slice(None))
    full = [render(c, s) for c in cases for s in (64, 16)]
    for (a, ma), (b, mb) in zip(banded, full, strict=True):
        assert torch.equal(a, b) and torch.equal(ma, mb)


def test_render_rejects_bad_input():
    factors = sample_factors(2, 0)
    with pytest.raises(ValueError, match="image_size"):
        render(factors, 2)
    del factors["mouth_width"]
    with pytest.raises(ValueError, match="mouth_width"):
        render(factors, 32)


# --------------------------------------------------------------------------- SyntheticFaces


def test_synthetic_faces_items_batches_and_ground_truth():
    data = SyntheticFaces(num_images=40, image_size=32, seed=3)
    assert len(data) == 40
    item = data[5]
    assert item.shape == (3, 32, 32) and item.min() >= -1 and item.max() <= 1
    batch = torch.stack(data.__getitems__([5, 0, 39]))
    torch.testing.assert_close(batch[0], item, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch[2], data[-1], atol=1e-6, rtol=0)
    expected = sample_factors(40, 3)
    got = data.factors([5, 39])
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name][[5, 39]])
    images, masks = render(data.factors([5]), 32)
    torch.testing.assert_close(images[0], item, atol=1e-6, rtol=0)
    assert torch.equal(data.masks([5]), masks)
    loaded = next(iter(DataLoader(data, batch_size=8, shuffle=False)))
    torch.testing.assert_close(loaded, torch.stack([data[i] for i in range(8)]), atol=1e-6, rtol=0)
    # Workers receive a pickled copy: it renders the same faces.
    torch.testing.assert_close(pickle.loads(pickle.dumps(data))[7], data[7], atol=0, rtol=0)
    with pytest.raises(IndexError):
        data.factors([40])


def test_synthetic_faces_ranges_override_and_errors():
    data = SyntheticFaces(num_images=200, image_size=16, ranges={"eye_spacing": [0.5, 0.6]})
    spacing = data.factors(slice(None))["eye_spacing"]
    assert spacing.min() >= 0.5 - 1e-6 and spacing.max() <= 0.6 + 1e-6
    with pytest.raises(ValueError, match="nose_length"):
        SyntheticFaces(num_images=4, ranges={"nose_length": [0.1, 0.2]})
    with pytest.raises(ValueError, match="eye_spacing"):
        SyntheticFaces(num_images=4, ranges={"eye_spacing": [0.6, 0.5]})
    with pytest.raises(ValueError, match="hair_palette"):
        SyntheticFaces(num_images=4, ranges={"hair_palette": [[1.5, 0.0, 0.0]]})
    with pytest.raises(ValueError, match="num_images"):
        SyntheticFaces(num_images=0)


# --------------------------------------------------------------------------- LFW


def test_lfw_faces_shape_range_and_source():
    from skimage.data import lfw_subset

    data = LFWFaces(image_size=32)
    assert len(data) == 200
    assert data[0].shape == (1, 32, 32) and data[0].dtype == torch.float32
    assert data.images.min() >= -1 and data.images.max() <= 1
    native = LFWFaces(image_size=25)  # the shipped size: no resampling at all
    reference = torch.as_tensor(lfw_subset(), dtype=torch.float32) * 2 - 1
    torch.testing.assert_close(native.images[:, 0], reference)
    # Resizing keeps the picture: the 32-pixel face shrunk back is close to the original.
    back = torch.nn.functional.interpolate(data.images, size=25, mode="area")
    assert (back - native.images).abs().mean() < 0.05


# --------------------------------------------------------------------------- ImageFolder


def _write_folder(root: Path) -> None:
    rng = np.random.default_rng(0)
    (root / "sub").mkdir(parents=True)
    for i in range(3):
        pixels = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / f"rgb{i}.jpg", quality=95)
    # 30 wide, 20 high: the centred 20×20 square is white, the 5-column sides black.
    gray = np.zeros((20, 30), dtype=np.uint8)
    gray[:, 5:25] = 255
    Image.fromarray(gray).save(root / "sub" / "gray.png")
    (root / "corrupt.jpg").write_bytes(b"this is not a JPEG" * 20)
    whole = (root / "rgb0.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "trailing.jpg").write_bytes(whole + b"\x00extra data after the image" * 10)
    (root / "notes.txt").write_text("not an image")


def test_image_folder_loads_converts_and_skips_bad_files(tmp_path):
    _write_folder(tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = ImageFolder(tmp_path, image_size=16)
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1 and "skipped 2 of 7" in messages[0]
    names = [Path(p).name for p in data.paths]
    assert names == ["rgb0.jpg", "rgb1.jpg", "rgb2.jpg", "gray.png", "trailing.jpg"]
    for i in range(len(data)):
        item = data[i]
        assert item.shape == (3, 16, 16) and item.min() >= -1 and item.max() <= 1
    torch.testing.assert_close(data[4], data[0])  # bytes after the end marker are ignored
    gray = data[names.index("gray.png")]
    torch.testing.assert_close(gray, torch.ones(3, 16, 16))  # centre crop, gray -> RGB


def test_image_folder_crop_geometry_and_single_channel(tmp_path):
    _write_folder(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        full = ImageFolder(tmp_path / "sub", image_size=20)
        centre = ImageFolder(tmp_path / "sub", image_size=20, crop_size=10)
        wide = ImageFolder(tmp_path / "sub", image_size=20, crop_size=20)
        single = ImageFolder(tmp_path, image_size=16, channels=1)
    torch.testing.assert_close(full[0], torch.ones(3, 20, 20), atol=0, rtol=0)
    torch.testing.assert_close(centre[0], torch.ones(3, 20, 20), atol=0, rtol=0)
    torch.testing.assert_close(wide[0], torch.ones(3, 20, 20), atol=0, rtol=0)
    assert single[0].shape == (1, 16, 16)
    # Luma of the RGB image (ITU-R 601-2) equals the single-channel load, up to rounding.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = ImageFolder(tmp_path, image_size=16)[0]
    luma = (0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]).unsqueeze(0)
    assert (luma - single[0]).abs().max() < 0.03


def test_image_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="data.root") as missing:
        ImageFolder(tmp_path / "nowhere")
    assert "nowhere" in str(missing.value)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError, match="no image files") as empty:
        ImageFolder(tmp_path / "empty")
    assert ".jpg" in str(empty.value) and "data.root" in str(empty.value)
    with pytest.raises(ValueError, match="data.root is not set"):
        ImageFolder(None)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipped 1 of 1"):
        with pytest.raises(ValueError, match="none of the 1"):
            ImageFolder(tmp_path / "bad")
    with pytest.raises(ValueError, match="data.channels"):
        ImageFolder(tmp_path, channels=2)


# --------------------------------------------------------------------------- CelebA


def _write_celeba(parent: Path, n: int = 3) -> Path:
    folder = parent / "img_align_celeba"
    folder.mkdir(parents=True)
    for i in range(n):
        pixels = np.zeros((218, 178, 3), dtype=np.uint8)
        pixels[:] = (30, 200, 90)  # outside the 148 crop: green
        value = 60 + 60 * i
        pixels[35:183, 15:163] = value  # the centred 148×148 crop: uniform gray
        Image.fromarray(pixels).save(folder / f"{i + 1:06d}.jpg", quality=100, subsampling=0)
    return folder


def test_celeba_crop_resize_and_root_forms(tmp_path):
    folder = _write_celeba(tmp_path)
    from_parent, from_folder = CelebA(tmp_path), CelebA(folder)
    assert from_parent.paths == from_folder.paths and len(from_parent) == 3
    for i in range(3):
        item = from_parent[i]
        assert item.shape == (3, 64, 64)
        expected = (60 + 60 * i) / 127.5 - 1
        assert (item - expected).abs().max() < 0.06  # only the gray crop survives


def test_celeba_errors_say_where_to_put_the_files(tmp_path):
    for root, error in ((tmp_path / "absent", FileNotFoundError), (None, ValueError)):
        with pytest.raises(error, match="img_align_celeba") as info:
            CelebA(root)
        assert "data.root" in str(info.value)
    (tmp_path / "img_align_celeba").mkdir()
    with pytest.raises(FileNotFoundError, match="000001.jpg"):
        CelebA(tmp_path)


# --------------------------------------------------------------------------- DataModule


def test_datamodule_split_determinism_and_loaders():
    data = SyntheticFaces(num_images=100, image_size=16)
    dm = ImageDataModule(data, batch_size=16, val_fraction=0.1, seed=5)
    assert len(dm.train_set) == 90 and len(dm.val_set) == 10
    assert sorted(dm.train_indices + dm.val_indices) == list(range(100))
    same = ImageDataModule(data, batch_size=16, val_fraction=0.1, seed=5)
    other = ImageDataModule(data, batch_size=16, val_fraction=0.1, seed=6)
    assert same.val_indices == dm.val_indices and other.val_indices != dm.val_indices
    batches = list(dm.train_dataloader())
    assert len(batches) == 90 // 16 and all(b.shape == (16, 3, 16, 16) for b in batches)
    assert sum(len(b) for b in dm.val_dataloader()) == 10
    assert not dm.train_dataloader().persistent_workers
    workers = ImageDataModule(data, batch_size=16, num_workers=2, val_fraction=0.1)
    assert workers.train_dataloader().persistent_workers  # not iterated: no processes


def test_probe_batch_is_fixed_and_from_validation():
    data = SyntheticFaces(num_images=60, image_size=16)
    dm = ImageDataModule(data, batch_size=8, val_fraction=0.2, seed=1)
    probe = dm.probe_batch(5)
    assert probe.shape == (5, 3, 16, 16)
    assert torch.equal(probe, dm.probe_batch(5))
    expected = torch.stack([data[i] for i in dm.val_indices[:5]])
    torch.testing.assert_close(probe, expected, atol=1e-6, rtol=0)
    with pytest.warns(UserWarning, match="only 12 validation images"):
        assert dm.probe_batch(64).shape[0] == 12


def test_datamodule_argument_errors_name_the_key():
    data = SyntheticFaces(num_images=20, image_size=16)
    with pytest.raises(ValueError, match="data.datamodule.batch_size"):
        ImageDataModule(data, batch_size=0)
    with pytest.raises(ValueError, match="data.datamodule.batch_size"):
        ImageDataModule(data, batch_size=64)  # 19 training images, drop_last
    for fraction in (0.0, 1.0, -0.5):
        with pytest.raises(ValueError, match="data.datamodule.val_fraction"):
            ImageDataModule(data, batch_size=4, val_fraction=fraction)
    with pytest.raises(ValueError, match="data.datamodule.num_workers"):
        ImageDataModule(data, batch_size=4, num_workers=-1)
    with pytest.raises(ValueError, match="too few"):
        ImageDataModule(SyntheticFaces(num_images=1, image_size=16), batch_size=1)
    with pytest.raises(TypeError, match="data.datamodule.dataset"):
        ImageDataModule(object(), batch_size=4)


# --------------------------------------------------------------------------- configs


def _config(name: str, **data_overrides):
    data = OmegaConf.load(CONF / f"{name}.yaml")
    for key, value in data_overrides.items():
        OmegaConf.update(data, key, value)
    return OmegaConf.create({"seed": 3, "model": {"image_size": 16}, "data": data})


@pytest.mark.parametrize("name, channels", [("faces", 3), ("lfw", 1), ("celeba", 3), ("folder", 3)])
def test_data_configs_instantiate(tmp_path, name, channels):
    overrides = {"datamodule.batch_size": 2}
    if name == "faces":
        overrides["datamodule.dataset.num_images"] = 40
    if name in ("celeba", "folder"):
        _write_celeba(tmp_path)
        overrides["root"] = str(tmp_path)
    cfg = _config(name, **overrides)
    assert cfg.data.channels == channels
    dm = instantiate(cfg.data.datamodule)
    assert isinstance(dm, ImageDataModule) and dm.seed == 3
    batch = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, channels, 16, 16)


@pytest.mark.parametrize("name", ["celeba", "folder"])
def test_data_configs_without_root_say_data_root(name):
    with pytest.raises(Exception, match="data.root"):
        instantiate(_config(name).data.datamodule)


def test_faces_config_ranges_override():
    cfg = _config(
        "faces",
        **{
            "datamodule.batch_size": 8,
            "datamodule.dataset.num_images": 40,
            "datamodule.dataset.ranges": {"size": [0.4, 0.45]},
        },
    )
    sizes = instantiate(cfg.data.datamodule).dataset.factors(slice(None))["size"]
    assert sizes.min() >= 0.4 - 1e-6 and sizes.max() <= 0.45 + 1e-6

"""Any local folder of images as a dataset: centre crop, resize, scale to [-1, 1]."""

from __future__ import annotations

import os
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from icm.data._checks import check_int

IMAGE_EXTENSIONS: tuple[str, ...] = ("jpg", "jpeg", "png", "bmp", "webp")

# How far from the end of a JPEG file its end-of-image marker may sit (trailing padding).
_JPEG_TAIL = 1024


class ImageFolder(Dataset):
    """Every image file under `root` (searched recursively, sorted by path).

    Each image is centre-cropped to a `crop_size` square (None: the largest centred
    square), resized to `image_size` (PIL bilinear, antialiased when shrinking) and scaled
    to [-1, 1]; items are (channels, H, W) float tensors. With channels=3 grayscale and
    palette images are converted to RGB (gray copied to the three channels); with
    channels=1 colour images are converted to luminance (PIL "L": ITU-R 601-2 luma). An
    alpha channel is dropped.

    Every file is checked once at construction (PIL header and `verify()`, and for JPEGs
    the end-of-image marker, which a truncated file lacks), so that a bad file never
    crashes a DataLoader worker mid-epoch: unreadable, corrupt or truncated files, and
    images smaller than `crop_size`, are skipped with a single warning that counts them.
    """

    #: Where the folder is set in the Hydra config, named in the errors.
    root_key = "data.root"

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        image_size: int = 64,
        crop_size: int | None = None,
        channels: int = 3,
        extensions: Sequence[str] = IMAGE_EXTENSIONS,
    ) -> None:
        self.image_size = check_int(image_size, "data.datamodule.dataset.image_size", 1)
        self.crop_size = (
            None
            if crop_size is None
            else check_int(crop_size, "data.datamodule.dataset.crop_size", 1)
        )
        if channels not in (1, 3) or isinstance(channels, bool):
            raise ValueError(f"data.channels must be 1 or 3, got {channels!r}")
        self.channels = int(channels)
        self.mode = "RGB" if self.channels == 3 else "L"
        if isinstance(extensions, str):
            extensions = (extensions,)
        self.extensions = tuple(sorted({e.lower().lstrip(".") for e in extensions}))
        if not self.extensions or not all(self.extensions):
            raise ValueError(f"extensions must name at least one file type, got {extensions!r}")
        self.root = self._check_root(root)
        candidates = self._scan(self.root)
        if not candidates:
            raise FileNotFoundError(f"no image files under {self.root}: {self._what_to_put()}")
        problems: Counter[str] = Counter()
        first_bad: str | None = None
        self.paths: list[str] = []
        for path in candidates:
            problem = _check_image(path, self.crop_size)
            if problem is None:
                self.paths.append(path)
            else:
                problems[problem] += 1
                first_bad = first_bad or path
        if problems:
            details = ", ".join(f"{count} {reason}" for reason, count in sorted(problems.items()))
            warnings.warn(
                f"{type(self).__name__}: skipped {sum(problems.values())} of {len(candidates)} "
                f"files under {self.root} ({details}), e.g. {first_bad}",
                stacklevel=2,
            )
        if not self.paths:
            raise ValueError(
                f"none of the {len(candidates)} image files under {self.root} can be read: "
                f"{self._what_to_put()}"
            )

    def _what_to_put(self) -> str:
        """What the folder should hold and how to name it, for error messages."""
        kinds = ", ".join("." + e for e in self.extensions)
        return (
            f"set {self.root_key} to a folder holding image files ({kinds}; subfolders are "
            f"searched), e.g. {self.root_key}=/path/to/images"
        )

    def _check_root(self, root: str | os.PathLike[str] | None) -> Path:
        if root is None or str(root) in ("", "???"):
            raise ValueError(f"{self.root_key} is not set: {self._what_to_put()}")
        path = Path(root).expanduser()
        if not path.is_dir():
            what = "is not a folder" if path.exists() else "does not exist"
            raise FileNotFoundError(f"{self.root_key}={path} {what}: {self._what_to_put()}")
        return path

    def _scan(self, root: Path) -> list[str]:
        found = []
        for folder, subfolders, files in os.walk(root, followlinks=True):
            subfolders.sort()
            for name in files:
                if name.rsplit(".", 1)[-1].lower() in self.extensions and "." in name:
                    found.append(os.path.join(folder, name))
        return sorted(found)

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, path: str) -> torch.Tensor:
        """One image file as a (channels, image_size, image_size) tensor in [-1, 1]."""
        try:
            with Image.open(path) as image:
                width, height = image.size
                side = min(width, height) if self.crop_size is None else self.crop_size
                left, top = (width - side) // 2, (height - side) // 2
                # Crop, then resize: no pixel outside the crop leaks into the border.
                image = image.crop((left, top, left + side, top + side)).convert(self.mode)
                image = image.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
        except OSError as error:  # changed on disk since the check at construction
            raise OSError(f"cannot read image {path}: {error}") from error
        array = np.asarray(image, dtype=np.float32).reshape(
            self.image_size, self.image_size, self.channels
        )
        return torch.from_numpy(array / 127.5 - 1.0).permute(2, 0, 1).contiguous()

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.load(self.paths[index])


def _check_image(path: str, crop_size: int | None) -> str | None:
    """Why `path` cannot serve as an image (a short reason), or None when it can."""
    try:
        with Image.open(path) as image:
            image_format, size = image.format, image.size
            image.verify()  # format checks without decoding (PNG: chunk CRCs up to IEND)
        if image_format == "JPEG":
            if not _jpeg_ends(path):
                # Truncated, or data after the marker (rare): decoding tells which.
                with Image.open(path) as image:
                    image.draft(image.mode, (1, 1))
                    image.load()
        elif image_format != "PNG":
            with Image.open(path) as image:  # verify() checks little for other formats
                image.load()
    except Exception:  # PIL signals bad files with several exception types
        return "unreadable, corrupt or truncated"
    if crop_size is not None and min(size) < crop_size:
        return "smaller than crop_size"
    return None


def _jpeg_ends(path: str) -> bool:
    """Whether a JPEG file ends with its end-of-image marker (FF D9), padding aside."""
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - _JPEG_TAIL))
        tail = handle.read()
    return tail.rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9")

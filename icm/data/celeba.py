"""CelebA aligned faces (img_align_celeba/*.jpg, 178×218) from a local folder."""

from __future__ import annotations

import os
from pathlib import Path

from icm.data.folder import ImageFolder

CELEBA_FOLDER = "img_align_celeba"
CELEBA_URL = "https://mmlab.ie.cuhk.edu.hk/projects/CelebA.html"


class CelebA(ImageFolder):
    """The aligned CelebA JPEGs: centre crop `crop_size` (148), resize to `image_size`.

    `root` is the folder holding the JPEGs or its parent containing `img_align_celeba/`.
    Items are (3, H, W) tensors in [-1, 1]; loading and checks are `ImageFolder`'s.
    """

    def __init__(
        self,
        root: str | os.PathLike[str] | None,
        image_size: int = 64,
        crop_size: int | None = 148,
    ) -> None:
        if root is not None and (Path(root).expanduser() / CELEBA_FOLDER).is_dir():
            root = Path(root).expanduser() / CELEBA_FOLDER
        super().__init__(
            root, image_size=image_size, crop_size=crop_size, channels=3, extensions=("jpg",)
        )

    def _what_to_put(self) -> str:
        return (
            f"download img_align_celeba.zip ('Align&Cropped Images') from {CELEBA_URL}, "
            f"unzip it so that <dir>/{CELEBA_FOLDER}/000001.jpg exists, "
            f"and set {self.root_key}=<dir>"
        )

"""The small LFW face subset that scikit-image ships (200 grayscale faces), for 1-channel models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from icm.data._checks import check_int


class LFWFaces(Dataset):
    """`skimage.data.lfw_subset()`: 200 grayscale 25×25 faces, resized to `image_size`.

    Items are (1, H, W) float tensors in [-1, 1]. The images are resized once, at
    construction, with bilinear interpolation (antialiased when shrinking); they need no
    download: the file is part of the scikit-image package.
    """

    def __init__(self, image_size: int = 32) -> None:
        from skimage.data import lfw_subset

        self.image_size = check_int(image_size, "data.datamodule.dataset.image_size", 1)
        faces = torch.as_tensor(lfw_subset(), dtype=torch.float32).unsqueeze(1)  # [0, 1]
        if faces.shape[-1] != self.image_size or faces.shape[-2] != self.image_size:
            faces = F.interpolate(
                faces,
                size=(self.image_size, self.image_size),
                mode="bilinear",
                align_corners=False,
                antialias=True,
            )
        self.images = (faces * 2.0 - 1.0).clamp_(-1.0, 1.0).contiguous()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int) -> torch.Tensor:
        return self.images[index]

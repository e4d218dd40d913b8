"""LightningDataModule around any image dataset: seeded train/val split, loaders, probe batch."""

from __future__ import annotations

import warnings

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from icm.data._checks import check_int

_KEY = "data.datamodule"  # where the arguments live in the Hydra config, named in errors


class ImageDataModule(pl.LightningDataModule):
    """Train/val split of `dataset` (items: (C, H, W) tensors in [-1, 1]) and its loaders.

    The split depends only on `seed` and the dataset's length: `round(val_fraction * n)`
    images (at least one) go to validation, chosen by a seeded permutation; both index
    lists are kept sorted. Training batches are shuffled with torch's global generator
    (seeded by the training entry point) and, with `drop_last`, always full.
    `probe_batch(n)` is the first n validation images: the same tensor on every call.
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 64,
        num_workers: int = 0,
        val_fraction: float = 0.05,
        seed: int = 0,
        drop_last: bool = True,
    ) -> None:
        super().__init__()
        try:
            size = len(dataset)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"{_KEY}.dataset must be a dataset with a length, got {type(dataset).__name__}"
            ) from None
        self.batch_size = check_int(batch_size, f"{_KEY}.batch_size", 1)
        self.num_workers = check_int(num_workers, f"{_KEY}.num_workers", 0)
        if (
            isinstance(val_fraction, bool)
            or not isinstance(val_fraction, (int, float))
            or not 0.0 < val_fraction < 1.0
        ):
            raise ValueError(f"{_KEY}.val_fraction must lie in (0, 1), got {val_fraction!r}")
        self.val_fraction = float(val_fraction)
        self.seed = int(seed)
        self.drop_last = bool(drop_last)
        self.dataset = dataset

        num_val = max(1, round(self.val_fraction * size))
        num_train = size - num_val
        if num_train < 1:
            raise ValueError(
                f"{_KEY}.dataset has {size} images: too few to split into train and validation "
                f"with {_KEY}.val_fraction={self.val_fraction}"
            )
        if self.drop_last and num_train < self.batch_size:
            raise ValueError(
                f"{_KEY}.batch_size={self.batch_size} exceeds the {num_train} training images "
                f"of {_KEY}.dataset (drop_last would leave no batch): lower the batch size "
                f"or use a larger dataset"
            )
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.seed))
        self.val_indices: list[int] = sorted(order[:num_val].tolist())
        self.train_indices: list[int] = sorted(order[num_val:].tolist())
        self.train_set = Subset(dataset, self.train_indices)
        self.val_set = Subset(dataset, self.val_indices)

    def _loader(self, subset: Subset, train: bool) -> DataLoader:
        return DataLoader(
            subset,
            batch_size=self.batch_size,
            shuffle=train,
            drop_last=self.drop_last and train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, train=False)

    def probe_batch(self, n: int = 64) -> torch.Tensor:
        """The first `n` validation images, stacked: (n, C, H, W), identical on every call.

        With fewer than `n` validation images, all of them are returned, with a warning.
        """
        n = check_int(n, "n", 1)
        available = len(self.val_set)
        if n > available:
            warnings.warn(
                f"probe_batch: only {available} validation images, fewer than the {n} asked; "
                f"raise {_KEY}.val_fraction for a full probe",
                stacklevel=2,
            )
            n = available
        return torch.stack(self.val_set.__getitems__(list(range(n))))

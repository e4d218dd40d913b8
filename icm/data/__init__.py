"""Datasets (synthetic faces with factors and masks, LFW, CelebA, image folders), DataModule."""

from icm.data.celeba import CelebA
from icm.data.datamodule import ImageDataModule
from icm.data.faces import (
    FLUO_HAIR,
    HAIR_PALETTE,
    PART_NAMES,
    FaceRanges,
    SyntheticFaces,
    extrapolate,
    render,
    render_images,
    sample_factors,
)
from icm.data.folder import ImageFolder
from icm.data.lfw import LFWFaces

__all__ = [
    "FLUO_HAIR",
    "HAIR_PALETTE",
    "PART_NAMES",
    "CelebA",
    "FaceRanges",
    "ImageDataModule",
    "ImageFolder",
    "LFWFaces",
    "SyntheticFaces",
    "extrapolate",
    "render",
    "render_images",
    "sample_factors",
]

"""Procedural synthetic faces with known factors and part masks, renderable outside training ranges.

Geometry is resolution-free: the image spans [-1, 1] on both axes (x to the right, y down),
so the same factors render the same face at 64, 32 or 16 pixels. All lengths of the face
parts are relative to the face `size` (its half-height), so the factors are independent:

=================  ===========================================================================
factor             meaning (training range in `FaceRanges`)
=================  ===========================================================================
pos_x, pos_y       face centre, in image half-widths
size               face half-height, in image half-widths (half-width is 0.78 * size)
skin_tone          0 (lightest) .. 1 (darkest), piecewise linear through `SKIN_TONES`
eye_spacing        half the distance between the eye centres, in face half-widths
eye_size           eye radius, in face half-heights
mouth_width        mouth half-width, in face half-widths
hair_volume        0 (short, close cap) .. 1 (voluminous, long, low fringe)
hair_colour        RGB in [0, 1], shape (n, 3): a `HAIR_PALETTE` colour plus a small jitter
background_colour  RGB in [0, 1], shape (n, 3)
=================  ===========================================================================

Parts are painted back to front: background, hair (behind the face), face (with neck),
fringe (hair over the forehead), mouth, eyes. Every layer has an anti-aliased coverage in
[0, 1]; a pixel's part label is the front-most layer covering at least half of it, so the
masks partition the image (the fringe counts as hair, the neck as face).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from icm.data._checks import check_int

PART_NAMES: tuple[str, ...] = ("background", "hair", "face", "eyes", "mouth")

#: Natural hair colours (RGB in [0, 1]): blacks, browns, blondes, greys, auburn.
HAIR_PALETTE: dict[str, tuple[float, float, float]] = {
    "black": (0.05, 0.04, 0.04),
    "soft_black": (0.15, 0.12, 0.10),
    "dark_brown": (0.27, 0.17, 0.10),
    "brown": (0.42, 0.27, 0.15),
    "light_brown": (0.60, 0.44, 0.28),
    "dark_blonde": (0.72, 0.58, 0.38),
    "blonde": (0.88, 0.76, 0.52),
    "platinum": (0.93, 0.89, 0.76),
    "grey": (0.58, 0.58, 0.57),
    "silver": (0.80, 0.80, 0.79),
    "auburn": (0.52, 0.20, 0.11),
    "copper": (0.72, 0.34, 0.16),
}

#: Fluorescent hair colours, far from every natural one: ground truth for FluoHair (App. B.7).
FLUO_HAIR: dict[str, tuple[float, float, float]] = {
    "pink": (1.0, 0.08, 0.58),
    "green": (0.20, 1.0, 0.10),
    "blue": (0.0, 0.55, 1.0),
}

#: Skin colours from light to dark; `skin_tone` interpolates linearly between them.
SKIN_TONES: tuple[tuple[float, float, float], ...] = (
    (0.98, 0.87, 0.77),
    (0.91, 0.74, 0.58),
    (0.78, 0.56, 0.38),
    (0.56, 0.36, 0.22),
    (0.35, 0.22, 0.15),
)

SCALAR_FACTORS: tuple[str, ...] = (
    "pos_x",
    "pos_y",
    "size",
    "skin_tone",
    "eye_spacing",
    "eye_size",
    "mouth_width",
    "hair_volume",
)
COLOUR_FACTORS: tuple[str, ...] = ("hair_colour", "background_colour")
FACTOR_NAMES: tuple[str, ...] = SCALAR_FACTORS + COLOUR_FACTORS

_SCLERA = (0.96, 0.96, 0.95)
_IRIS = (0.16, 0.10, 0.07)
_LIPS = (0.62, 0.18, 0.20)
_FACE_ASPECT = 0.78  # face half-width / half-height
_EYE_HEIGHT = -0.12  # eye centres, in face half-heights below the centre (negative: above)
_MOUTH_HEIGHT = 0.50
_MOUTH_THICKNESS = 0.07  # mouth half-height, in face half-heights
#: What selects faces of a SyntheticFaces: an index, a slice, or a sequence/array of indices.
Indices = int | slice | Sequence[int] | np.ndarray | torch.Tensor
_KEY = "data.datamodule.dataset.ranges"  # where the ranges live in the Hydra config
_RANGE_FIELDS: tuple[str, ...] = SCALAR_FACTORS + ("background_colour",)


@dataclasses.dataclass(frozen=True)
class FaceRanges:
    """Training distribution of the factors: a (low, high) uniform range per factor.

    `background_colour` is a per-channel range; hair colours are drawn uniformly from
    `hair_palette` and moved by a uniform jitter of at most `hair_jitter` per channel.
    """

    pos_x: tuple[float, float] = (-0.10, 0.10)
    pos_y: tuple[float, float] = (-0.08, 0.08)
    size: tuple[float, float] = (0.50, 0.62)
    skin_tone: tuple[float, float] = (0.0, 1.0)
    eye_spacing: tuple[float, float] = (0.32, 0.42)
    eye_size: tuple[float, float] = (0.08, 0.12)
    mouth_width: tuple[float, float] = (0.22, 0.42)
    hair_volume: tuple[float, float] = (0.0, 1.0)
    background_colour: tuple[float, float] = (0.15, 0.85)
    hair_palette: tuple[tuple[float, float, float], ...] = tuple(HAIR_PALETTE.values())
    hair_jitter: float = 0.03

    def __post_init__(self) -> None:
        for name in _RANGE_FIELDS:
            value = getattr(self, name)
            try:
                low, high = (float(v) for v in value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"{_KEY}.{name} must be a (low, high) pair of numbers, got {value!r}"
                ) from None
            if not (math.isfinite(low) and math.isfinite(high)):
                raise ValueError(f"{_KEY}.{name} must be finite, got {value!r}")
            if low > high:
                raise ValueError(f"{_KEY}.{name}: low {low} > high {high}")
            object.__setattr__(self, name, (low, high))
        palette = []
        for colour in self.hair_palette:
            rgb = tuple(float(c) for c in colour)
            if len(rgb) != 3 or not all(0.0 <= c <= 1.0 for c in rgb):
                raise ValueError(f"{_KEY}.hair_palette: {colour!r} is not an RGB triple in [0, 1]")
            palette.append(rgb)
        if not palette:
            raise ValueError(f"{_KEY}.hair_palette must hold at least one colour")
        object.__setattr__(self, "hair_palette", tuple(palette))
        object.__setattr__(self, "hair_jitter", float(self.hair_jitter))
        if not (math.isfinite(self.hair_jitter) and self.hair_jitter >= 0):
            raise ValueError(f"{_KEY}.hair_jitter must be >= 0, got {self.hair_jitter!r}")

    @classmethod
    def from_dict(cls, overrides: Mapping[str, Any] | None) -> FaceRanges:
        """FaceRanges with the fields named in `overrides` (e.g. a Hydra dict) replaced."""
        if overrides is None:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for key, value in overrides.items():
            if key not in known:
                raise ValueError(
                    f"{_KEY}: unknown factor {key!r}; known: {', '.join(sorted(known))}"
                )
            if key == "hair_jitter":
                values[key] = value
            elif key == "hair_palette":
                values[key] = tuple(tuple(c) for c in value)
            else:
                values[key] = tuple(value)
        return cls(**values)


def sample_factors(
    n: int, seed: int, ranges: FaceRanges | Mapping[str, Any] | None = None
) -> dict[str, np.ndarray]:
    """Draw `n` faces' factors from the training ranges, deterministically given `seed`.

    One (n, 15) block of uniforms is drawn row by row, so the first k rows do not depend
    on n: ``sample_factors(k, s)`` is a prefix of ``sample_factors(n, s)`` for k <= n.
    """
    n = check_int(n, "n", 0)
    if not isinstance(ranges, FaceRanges):
        ranges = FaceRanges.from_dict(ranges)
    rng = np.random.default_rng(seed)
    u = rng.random((n, len(SCALAR_FACTORS) + 7))
    factors: dict[str, np.ndarray] = {}
    for column, name in enumerate(SCALAR_FACTORS):
        low, high = getattr(ranges, name)
        factors[name] = (low + (high - low) * u[:, column]).astype(np.float32)
    k = len(SCALAR_FACTORS)
    palette = np.asarray(ranges.hair_palette, dtype=np.float64)
    choice = np.minimum((u[:, k] * len(palette)).astype(np.int64), len(palette) - 1)
    jitter = ranges.hair_jitter * (2.0 * u[:, k + 1 : k + 4] - 1.0)
    factors["hair_colour"] = np.clip(palette[choice] + jitter, 0.0, 1.0).astype(np.float32)
    low, high = ranges.background_colour
    factors["background_colour"] = (low + (high - low) * u[:, k + 4 : k + 7]).astype(np.float32)
    return factors


def extrapolate(factors: Mapping[str, np.ndarray], **changes: Any) -> dict[str, np.ndarray]:
    """Copy of `factors` moved outside (or inside) the training ranges.

    Scalar factors are *multiplied* by the given value (``eye_spacing=1.5`` widens the gap
    between the eyes by half); colour factors are *replaced* by the given RGB triple (for
    every face) or (n, 3) array, e.g. ``hair_colour=FLUO_HAIR["pink"]``.
    """
    n = _num_faces(factors)
    out = {name: np.array(value, dtype=np.float32, copy=True) for name, value in factors.items()}
    for name, value in changes.items():
        if name in SCALAR_FACTORS:
            out[name] = (out[name] * np.asarray(value, dtype=np.float32)).astype(np.float32)
        elif name in COLOUR_FACTORS:
            colour = np.asarray(value, dtype=np.float32)
            if colour.shape not in ((3,), (n, 3)):
                raise ValueError(f"{name} must be an RGB triple or ({n}, 3), got {colour.shape}")
            out[name] = np.broadcast_to(colour, (n, 3)).copy()
        else:
            known = ", ".join(FACTOR_NAMES)
            raise ValueError(f"extrapolate: unknown factor {name!r}; known: {known}")
    return out


def _num_faces(factors: Mapping[str, np.ndarray]) -> int:
    missing = [name for name in FACTOR_NAMES if name not in factors]
    if missing:
        raise ValueError(f"factors is missing {', '.join(missing)}")
    n = len(np.asarray(factors["pos_x"]))
    for name in SCALAR_FACTORS:
        if np.shape(factors[name]) != (n,):
            raise ValueError(f"factors[{name!r}] must be ({n},), got {np.shape(factors[name])}")
    for name in COLOUR_FACTORS:
        if np.shape(factors[name]) != (n, 3):
            raise ValueError(f"factors[{name!r}] must be ({n}, 3), got {np.shape(factors[name])}")
    return n


def _column(factors: Mapping[str, np.ndarray], name: str) -> torch.Tensor:
    """A scalar factor as an (n, 1, 1) tensor, broadcasting over (n, H, W)."""
    return torch.as_tensor(np.asarray(factors[name], dtype=np.float32)).view(-1, 1, 1)


class _Canvas:
    """Anti-aliased coverage of simple shapes on an (n, H, W) grid spanning [-1, 1]².

    Shapes are written so that every term but the last is separable, an (n, 1, W) or
    (n, H, 1) array: only a few operations per shape touch all n·H·W pixels.
    """

    def __init__(self, image_size: int) -> None:
        grid = (torch.arange(image_size, dtype=torch.float32) + 0.5) * (2.0 / image_size) - 1.0
        self.x = grid.view(1, 1, image_size)
        self.y = grid.view(1, image_size, 1)
        self.pixel = 2.0 / image_size

    def ellipse(
        self,
        cx: torch.Tensor,
        cy: torch.Tensor,
        ax: torch.Tensor,
        ay: torch.Tensor,
        mirror: torch.Tensor | None = None,
        rows: slice = slice(None),
    ) -> torch.Tensor:
        """Coverage of the ellipse ((x-cx)/ax)² + ((y-cy)/ay)² <= 1.

        The signed distance to the border is approximated to first order, F / |∇F| with
        F = ((x-cx)/ax)² + ((y-cy)/ay)² - 1, and the coverage is a one-pixel linear ramp
        across it, 0.5 exactly on the border. With `mirror` = m, |x - cx| replaces x - cx
        and the ellipse is centred at ±m: a symmetric pair of ellipses for the price of one.
        Only the image rows `rows` are computed (see `rows_of`).
        """
        ax = ax.clamp_min(1e-6)
        ay = ay.clamp_min(1e-6)
        dx = self.x - cx
        if mirror is not None:
            dx = dx.abs_().sub_(mirror)
        dx = dx.div_(ax)
        dy = (self.y[:, rows] - cy).div_(ay)
        # Scale |∇F| by the pixel size so that F / |∇F| is a distance in pixels.
        # The tiny constant keeps the gradient non-zero at the centre (separable term).
        gx = (dx * (2.0 * self.pixel) / ax).square_().add_(1e-12)
        gy = (dy * (2.0 * self.pixel) / ay).square_()
        grad = torch.add(gx, gy).sqrt_()
        f = torch.add(dx.square_(), dy.square_().sub_(1.0))
        return torch.addcdiv(torch.tensor(0.5), f, grad, value=-1.0).clamp_(0.0, 1.0)

    def rows_of(self, cy: torch.Tensor, ax: torch.Tensor, ay: torch.Tensor) -> slice:
        """Image rows that an ellipse (centre row `cy`, semi-axes `ax`, `ay`) may touch.

        The band spans every face of the batch, plus a margin of 2·max(1, ay/ax) pixels
        beyond each ellipse's vertical extent: there the first-order distance F / |∇F|
        exceeds one pixel for every shape (checked numerically over aspect ratios from
        1/200 to 50), so the coverage outside the band is exactly zero.
        """
        size = self.y.shape[1]
        ax, ay = ax.abs().clamp_min(1e-6), ay.abs().clamp_min(1e-6)
        reach = ay + 2.0 * self.pixel * (ay / ax).clamp_min(1.0)
        top = float((cy - reach).min()) + 1.0
        bottom = float((cy + reach).max()) + 1.0
        start = min(size, max(0, math.floor(top / self.pixel)))
        stop = max(start, min(size, math.ceil(bottom / self.pixel)))
        return slice(start, stop)

    def below(self, edge: torch.Tensor) -> torch.Tensor:
        """Coverage of the region y <= edge; a ramp along y (shape as edge - y broadcasts)."""
        # (edge / p + 0.5) - y / p: the full-size array is made by the last subtraction.
        return torch.sub(edge / self.pixel + 0.5, self.y / self.pixel).clamp_(0.0, 1.0)

    def band(self, cx: torch.Tensor, half_width: torch.Tensor) -> torch.Tensor:
        """Coverage of the vertical band |x - cx| <= half_width, shape (n, 1, W)."""
        return (half_width - (self.x - cx).abs()).div_(self.pixel).add_(0.5).clamp_(0.0, 1.0)


def _skin_colour(tone: np.ndarray) -> np.ndarray:
    """RGB of each skin tone: piecewise linear through SKIN_TONES, clamped at both ends."""
    anchors = np.linspace(0.0, 1.0, len(SKIN_TONES))
    table = np.asarray(SKIN_TONES)
    return np.stack([np.interp(tone, anchors, table[:, c]) for c in range(3)], axis=-1)


# Faces rendered together: keeps every (chunk, H, W) temporary in cache (64×64: 256 KiB).
_CHUNK_PIXELS = 16 * 64 * 64


def render(
    factors: Mapping[str, np.ndarray], image_size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Render faces from their factors.

    Returns images (n, 3, H, W) float32 in [-1, 1] and part masks (n, 5, H, W) bool in the
    order of `PART_NAMES`; every pixel belongs to exactly one part. Any factor values are
    accepted (extrapolation): colours are clipped to [0, 1], skin tones outside [0, 1] take
    the nearest end of the skin palette, parts leaving the image are cropped.
    """
    images, masks = _render(factors, image_size, with_masks=True)
    assert masks is not None
    return images, masks


def _render(
    factors: Mapping[str, np.ndarray], image_size: int, with_masks: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    image_size = check_int(image_size, "image_size", 4)
    n = _num_faces(factors)
    # Layer colours, back to front: background, hair, face, fringe, mouth, sclera, iris.
    hair = np.clip(np.asarray(factors["hair_colour"], dtype=np.float64), 0.0, 1.0)
    colours = np.stack(
        [
            np.clip(np.asarray(factors["background_colour"], dtype=np.float64), 0.0, 1.0),
            hair,
            _skin_colour(np.asarray(factors["skin_tone"], dtype=np.float64)),
            hair,
            np.broadcast_to(_LIPS, (n, 3)),
            np.broadcast_to(_SCLERA, (n, 3)),
            np.broadcast_to(_IRIS, (n, 3)),
        ],
        axis=2,
    )  # (n, 3, L)
    colours_t = torch.as_tensor(colours * 2.0 - 1.0, dtype=torch.float32)
    scalars = {name: _column(factors, name) for name in SCALAR_FACTORS}
    images = torch.empty(n, 3, image_size, image_size)
    masks = (
        torch.empty(n, len(PART_NAMES), image_size, image_size, dtype=torch.bool)
        if with_masks
        else None
    )
    canvas = _Canvas(image_size)
    chunk = max(1, _CHUNK_PIXELS // (image_size * image_size))
    for start in range(0, n, chunk):
        part = slice(start, min(n, start + chunk))
        weights, labels = _layers(canvas, {k: v[part] for k, v in scalars.items()}, with_masks)
        m = weights.shape[0]
        torch.bmm(
            colours_t[part], weights.view(m, weights.shape[1], -1), out=images[part].view(m, 3, -1)
        )
        images[part].clamp_(-1.0, 1.0)  # weights sum to one: this only trims rounding
        if masks is not None and labels is not None:
            for index in range(len(PART_NAMES)):
                torch.eq(labels, index, out=masks[part, index])
    return images, masks


def render_images(factors: Mapping[str, np.ndarray], image_size: int = 64) -> torch.Tensor:
    """The images of `render` alone (n, 3, H, W), skipping the part masks (faster)."""
    return _render(factors, image_size, with_masks=False)[0]


def _layers(
    canvas: _Canvas, f: dict[str, torch.Tensor], with_labels: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Compositing weights (n, L, H, W) of the layers (background first) and part labels."""
    cx, cy = f["pos_x"], f["pos_y"]
    size = f["size"].abs()
    half_width = _FACE_ASPECT * size
    volume = f["hair_volume"]

    # Hair behind the face: a cap grown by the volume, cut at a length that grows with it.
    margin = size * (0.10 + 0.28 * volume)
    hair_back = canvas.ellipse(cx, cy - 0.10 * size, half_width + margin, size + margin)
    hair_back.mul_(canvas.below(cy + size * (-0.15 + 0.95 * volume)))
    # Face and neck (the neck counts as face).
    face = canvas.ellipse(cx, cy, half_width, size)
    neck = canvas.band(cx, 0.36 * size) * (1.0 - canvas.below(cy + 0.4 * size))
    face_and_neck = torch.maximum(face, neck)
    # Fringe: hair over the forehead, above a hairline that dips towards the temples. It
    # covers the face's anti-aliased border fully, so that no skin shows through it.
    temple = ((canvas.x - cx) / half_width).square_().mul_(0.30 * size)
    fringe = canvas.below(temple.add_(cy - size * (0.62 - 0.22 * volume))).mul_(face > 0)
    # Mouth, and the two eyes (white, with a dark iris) as mirrored ellipses.
    # These small parts are computed only on the band of rows they can touch.
    mouth_y, mouth_ay = cy + _MOUTH_HEIGHT * size, _MOUTH_THICKNESS * size
    mouth_ax = f["mouth_width"] * half_width
    mouth_rows = canvas.rows_of(mouth_y, mouth_ax, mouth_ay)
    mouth = canvas.ellipse(cx, mouth_y, mouth_ax, mouth_ay, rows=mouth_rows)
    eye_x = f["eye_spacing"] * half_width
    eye_y = cy + _EYE_HEIGHT * size
    radius = f["eye_size"].abs() * size
    eye_rows = canvas.rows_of(eye_y, 0.6 * radius, 0.85 * radius)  # covers the iris too
    sclera = canvas.ellipse(cx, eye_y, 1.3 * radius, 0.85 * radius, mirror=eye_x, rows=eye_rows)
    iris = canvas.ellipse(cx, eye_y, 0.6 * radius, 0.6 * radius, mirror=eye_x, rows=eye_rows)
    every = slice(None)
    # Back to front: (coverage on `rows`, rows, part index).
    layers = (
        (hair_back, every, 1),
        (face_and_neck, every, 2),
        (fringe, every, 1),
        (mouth, mouth_rows, 4),
        (sclera, eye_rows, 3),
        (iris, eye_rows, 3),
    )

    # Over-compositing, front to back: a layer's weight is its coverage times what the
    # layers in front of it leave visible; the background takes the rest.
    n, h, w = face.shape
    weights = torch.empty(n, len(layers) + 1, h, w)
    visible = torch.ones(n, h, w)
    for k in range(len(layers), 0, -1):
        coverage, rows, _ = layers[k - 1]
        if rows != every:
            weights[:, k].zero_()
        torch.mul(coverage, visible[:, rows], out=weights[:, k, rows])
        visible[:, rows].sub_(weights[:, k, rows])
    weights[:, 0] = visible
    if not with_labels:
        return weights, None
    # Hard assignment: the front-most layer covering at least half of the pixel.
    labels = torch.zeros(n, h, w, dtype=torch.uint8)
    for coverage, rows, part in layers:
        labels[:, rows].masked_fill_(coverage >= 0.5, part)
    return weights, labels


class SyntheticFaces(Dataset):
    """Dataset of procedural faces: item i is a (3, H, W) tensor in [-1, 1].

    Factors for all `num_images` faces are drawn once at construction (a few milliseconds);
    images are rendered on demand, one by one (`__getitem__`) or a batch at a time
    (`__getitems__`, used by the DataLoader), identically either way. Ground truth:
    `.factors(indices)` and `.masks(indices)`.
    """

    def __init__(
        self,
        num_images: int = 20000,
        image_size: int = 64,
        seed: int = 0,
        ranges: Mapping[str, Any] | None = None,
    ) -> None:
        self.num_images = check_int(num_images, "data.datamodule.dataset.num_images", 1)
        self.image_size = check_int(image_size, "data.datamodule.dataset.image_size", 4)
        self.seed = int(seed)
        self.ranges = FaceRanges.from_dict(ranges)
        self._factors = sample_factors(self.num_images, self.seed, self.ranges)

    def __len__(self) -> int:
        return self.num_images

    def _indices(self, indices: Indices) -> np.ndarray:
        if isinstance(indices, slice):
            return np.arange(self.num_images)[indices]
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -self.num_images or idx.max() >= self.num_images):
            raise IndexError(f"index out of range for {self.num_images} faces")
        return np.where(idx < 0, idx + self.num_images, idx)

    def factors(self, indices: Indices) -> dict[str, np.ndarray]:
        """Factors of the faces at `indices` (always batched: arrays with a leading n)."""
        idx = self._indices(indices)
        return {name: value[idx].copy() for name, value in self._factors.items()}

    def render(self, indices: Indices) -> tuple[torch.Tensor, torch.Tensor]:
        """Images (n, 3, H, W) and part masks (n, 5, H, W) of the faces at `indices`."""
        return render(self.factors(indices), self.image_size)

    def masks(self, indices: Indices) -> torch.Tensor:
        """Part masks (n, 5, H, W) bool of the faces at `indices`, parts as in PART_NAMES."""
        return self.render(indices)[1]

    def __getitem__(self, index: int) -> torch.Tensor:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)):
            raise TypeError(f"SyntheticFaces index must be an integer, got {type(index).__name__}")
        return render_images(self.factors([index]), self.image_size)[0]

    def __getitems__(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """A batch of items rendered together (the DataLoader's batched fetch)."""
        return list(render_images(self.factors(indices), self.image_size).unbind(0))

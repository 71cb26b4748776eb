"""The synthetic images: what each class shows (a shape, a colour family, a texture) and how one
image of it is drawn, on a random gradient background with random position, scale, rotation,
colour jitter and pixel noise. Pure functions of their arguments and random generator.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from tinycnn.errors import DataError

SHAPES = ("circle", "square", "triangle", "cross", "ring", "diamond", "bar", "star")
# Colour families by hue in degrees; saturation and value are jittered per image.
COLOURS = (
    ("red", 0.0),
    ("orange", 30.0),
    ("yellow", 55.0),
    ("green", 120.0),
    ("cyan", 180.0),
    ("blue", 225.0),
    ("purple", 280.0),
)
TEXTURES = ("plain", "striped", "checkered", "spotted")
MAX_CLASSES = len(SHAPES) * len(COLOURS) * len(TEXTURES)  # 224


@dataclass(frozen=True)
class ClassSpec:
    """What every image of one class shows: a shape, in a colour family, with a texture."""

    shape: str
    colour: str
    hue: float
    texture: str

    @property
    def name(self) -> str:
        """Human-readable class name for words.txt, e.g. "striped blue square"."""
        words = [self.colour, self.shape]
        if self.texture != "plain":
            words.insert(0, self.texture)
        return " ".join(words)


def class_spec(index: int) -> ClassSpec:
    """The combination shown by class ``index`` (its line in wnids.txt), 0 <= index < MAX_CLASSES.

    Shape and colour cycle with coprime periods (8 and 7) and the texture steps with both, so
    any first ``n`` classes vary in all three factors and every combination appears once.
    """
    if not 0 <= index < MAX_CLASSES:
        raise DataError(f"class index {index} is outside 0..{MAX_CLASSES - 1}")
    cycle = len(SHAPES) * len(COLOURS)
    colour, hue = COLOURS[index % len(COLOURS)]
    texture = TEXTURES[(index + index // cycle) % len(TEXTURES)]
    return ClassSpec(SHAPES[index % len(SHAPES)], colour, hue, texture)


def render(
    spec: ClassSpec, rng: np.random.Generator, size: int
) -> tuple[np.ndarray, tuple[int, int, int, int]]:
    """Draw one image of ``spec``: (size, size, 3) uint8 pixels and the box (x0, y0, x1, y1).

    The box is inclusive and covers exactly the object's pixels, as in the official box files.
    """
    ys, xs = _grid(size)
    radius = rng.uniform(0.2, 0.34) * size
    centre = rng.uniform(radius, size - 1 - radius, size=2)
    angle = rng.uniform(-math.pi / 8, math.pi / 8)
    # Object-local coordinates in units of the radius, rotated with the object.
    dx, dy = (xs - centre[0]) / radius, (ys - centre[1]) / radius
    u = math.cos(angle) * dx + math.sin(angle) * dy
    v = -math.sin(angle) * dx + math.cos(angle) * dy
    mask = _shape_mask(spec.shape, u, v)
    if not mask.any():  # cannot happen with the ranges above; keeps the box well-defined
        mask[int(centre[1]), int(centre[0])] = True
    colour = _object_colour(spec.hue, rng)
    # Texture patterns are drawn in a darker shade of the same colour family.
    shade = np.where(_texture_mask(spec.texture, u, v, rng)[..., None], colour, colour * 0.35)
    pixels = np.where(mask[..., None], shade, _background(rng, xs, ys, size))
    pixels = pixels + rng.normal(0.0, 6.0, size=pixels.shape)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    box = (int(cols[0]), int(rows[0]), int(cols[-1]), int(rows[-1]))
    return np.clip(pixels + 0.5, 0, 255).astype(np.uint8), box


@lru_cache(maxsize=4)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (ys, xs), each (size, size) float64; cached per size."""
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    ys.flags.writeable = xs.flags.writeable = False
    return ys, xs


def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Boolean mask of ``shape`` in local coordinates whose unit is the object's radius."""
    au, av = np.abs(u), np.abs(v)
    dist = np.hypot(u, v)
    if shape == "circle":
        return dist <= 1.0
    if shape == "square":
        return np.maximum(au, av) <= 0.8
    if shape == "triangle":
        # Equilateral, pointing up (v grows downwards): inside all three edges.
        return (v <= 0.5) & (v >= -1.0 + math.sqrt(3) * au)
    if shape == "cross":
        return ((au <= 0.3) & (av <= 1.0)) | ((av <= 0.3) & (au <= 1.0))
    if shape == "ring":
        return (dist <= 1.0) & (dist >= 0.6)
    if shape == "diamond":
        return au + av <= 1.0
    if shape == "bar":
        return (au <= 1.0) & (av <= 0.35)
    if shape == "star":
        theta = np.arctan2(v, u) + math.pi / 2  # one point straight up
        points = (0.5 + 0.5 * np.cos(5 * theta)) ** 2  # 1 at the five tips, 0 between them
        return dist <= 0.45 + 0.55 * points
    raise DataError(f"unknown shape {shape!r}; known: {', '.join(SHAPES)}")


def _texture_mask(
    texture: str, u: np.ndarray, v: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Where the texture shows the main colour (True) rather than its darker shade."""
    period = rng.uniform(0.3, 0.45)  # in object radii: a few repeats across every shape
    phase = rng.uniform(0.0, 1.0, size=2)
    cu, cv = u / period + phase[0], v / period + phase[1]
    if texture == "plain":
        return np.ones(u.shape, dtype=bool)
    if texture == "striped":
        return (cu + cv) % 1.0 < 0.5  # diagonal stripes
    if texture == "checkered":
        return (np.floor(cu) + np.floor(cv)) % 2 == 0
    if texture == "spotted":
        return np.hypot(cu % 1.0 - 0.5, cv % 1.0 - 0.5) > 0.3
    raise DataError(f"unknown texture {texture!r}; known: {', '.join(TEXTURES)}")


def _object_colour(hue: float, rng: np.random.Generator) -> np.ndarray:
    """An RGB colour (3,) in 0..255 from a colour family, jittered in hue, saturation, value."""
    jittered = ((hue + rng.uniform(-10.0, 10.0)) % 360.0) / 360.0
    rgb = colorsys.hsv_to_rgb(jittered, rng.uniform(0.6, 1.0), rng.uniform(0.7, 1.0))
    return np.array(rgb) * 255.0


def _background(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray, size: int) -> np.ndarray:
    """A (size, size, 3) linear gradient between two random muted colours at a random angle."""
    start, end = rng.uniform(30.0, 200.0, size=(2, 3))
    angle = rng.uniform(0.0, 2 * math.pi)
    along = (math.cos(angle) * xs + math.sin(angle) * ys) / size
    along = (along - along.min()) / max(float(np.ptp(along)), 1e-9)
    return start + along[..., None] * (end - start)

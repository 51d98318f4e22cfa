"""The "shapes" world: a procedural text-to-image data set whose true distribution is known.

Every image is 64x64 RGB: one flat shape (circle, square or triangle, about a quarter of the image wide) of one
colour at one of five positions, on a flat background of another colour. Every caption follows exactly

    a {colour} {shape} {position} on a {background} background

The embedded tiny diffusion model and the tiny metric CLIP are trained on this world (`tinyworld/train.py`), and
the metrics use it as the real-data reference (Frechet distance / KID against real images). Because the world is
this simple, a pixel-level judge (`judge_image`) can read every attribute back from an image without any model.

Example:
    >>> from compression import world
    >>> attrs = world.sample_attributes(seed=0, n=2)
    >>> images = [world.render(a, seed=i) for i, a in enumerate(attrs)]
    >>> world.caption(attrs[0])
    'a purple circle on the left on a white background'
"""

from __future__ import annotations

import hashlib
import itertools
import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

SIZE = 64

# name -> RGB. Shapes and backgrounds draw from the same palette; a shape never matches its background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 170, 60),
    "blue": (40, 70, 220),
    "yellow": (240, 210, 40),
    "purple": (140, 50, 170),
    "orange": (245, 140, 30),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# position phrase -> nominal centre (x, y) in pixels.
POSITIONS: dict[str, tuple[int, int]] = {
    "on the left": (16, 32),
    "on the right": (48, 32),
    "at the top": (32, 16),
    "at the bottom": (32, 48),
    "in the center": (32, 32),
}
ATTRIBUTES: tuple[str, ...] = ("background", "colour", "position", "shape")

SHAPE_WIDTH = 16  # about a quarter of the image
SIZE_JITTER = 2  # width in [14, 18]
PLACE_JITTER = 3  # centre within +-3 px of nominal


@dataclass(frozen=True)
class Attributes:
    colour: str
    shape: str
    position: str
    background: str

    def __post_init__(self):
        for field, value, known in (
            ("colour", self.colour, COLOURS),
            ("shape", self.shape, SHAPES),
            ("position", self.position, POSITIONS),
            ("background", self.background, COLOURS),
        ):
            if value not in known:
                raise ValueError(f"unknown {field} {value!r}; known: {', '.join(known)}")
        if self.colour == self.background:
            raise ValueError("the shape colour must differ from the background colour")

    def replace(self, **changes: str) -> "Attributes":
        return Attributes(**{**self.__dict__, **changes})


def caption(a: Attributes) -> str:
    return f"a {a.colour} {a.shape} {a.position} on a {a.background} background"


def all_attributes() -> list[Attributes]:
    """Every combination the grammar allows (8 colours x 3 shapes x 5 positions x 7 backgrounds = 840)."""
    return [
        Attributes(c, s, p, b)
        for c, s, p, b in itertools.product(COLOURS, SHAPES, POSITIONS, COLOURS)
        if c != b
    ]


def is_held_out(a: Attributes, fraction: float = 0.2) -> bool:
    """Whether a caption belongs to the held-out split (never seen by the diffusion model in training).

    The split is a stable hash of the caption, so it does not depend on Python's hash seed or on ordering.
    """
    digest = hashlib.sha256(caption(a).encode()).digest()
    return int.from_bytes(digest[:4], "big") / 2**32 < fraction


def sample_attributes(seed: int, n: int, split: str = "all") -> list[Attributes]:
    """n attribute tuples drawn uniformly (with replacement) from the grammar, deterministic in `seed`.

    Args:
        seed (`int`): seed of the draw.
        n (`int`): how many.
        split (`str`, defaults to "all"): "all", "train" (captions the diffusion model trains on) or
            "heldout" (captions it never saw).
    """
    pool = all_attributes()
    if split == "train":
        pool = [a for a in pool if not is_held_out(a)]
    elif split == "heldout":
        pool = [a for a in pool if is_held_out(a)]
    elif split != "all":
        raise ValueError(f"unknown split {split!r}; known: all, train, heldout")
    rng = random.Random(seed)
    return [rng.choice(pool) for _ in range(n)]


def parse_caption(text: str) -> Attributes | None:
    """Attributes of a caption of the grammar, or None if the text does not follow it."""
    words = text.strip().lower()
    for a in _CAPTION_INDEX:
        if a[0] == words:
            return a[1]
    return None


_CAPTION_INDEX = [(caption(a), a) for a in all_attributes()]


def render(a: Attributes, seed: int) -> Image.Image:
    """Draw one 64x64 image of `a`; the size and placement jitter are deterministic in `seed`."""
    rng = random.Random(seed)
    width = SHAPE_WIDTH + rng.randint(-SIZE_JITTER, SIZE_JITTER)
    cx, cy = POSITIONS[a.position]
    cx += rng.randint(-PLACE_JITTER, PLACE_JITTER)
    cy += rng.randint(-PLACE_JITTER, PLACE_JITTER)
    image = Image.new("RGB", (SIZE, SIZE), COLOURS[a.background])
    draw = ImageDraw.Draw(image)
    half = width / 2
    box = (cx - half, cy - half, cx + half - 1, cy + half - 1)
    fill = COLOURS[a.colour]
    if a.shape == "circle":
        draw.ellipse(box, fill=fill)
    elif a.shape == "square":
        draw.rectangle(box, fill=fill)
    else:  # an upright isosceles triangle filling its bounding box
        draw.polygon([(cx, box[1]), (box[0], box[3]), (box[2], box[3])], fill=fill)
    return image


def real_images(seed: int, n: int, split: str = "all") -> tuple[list[Attributes], np.ndarray]:
    """n real images of the world as a uint8 array (n, 64, 64, 3), with their attributes."""
    attrs = sample_attributes(seed, n, split)
    # Each image gets its own jitter seed, derived from the draw seed so two seeds give disjoint images.
    base = seed * 1_000_003
    images = np.stack([np.asarray(render(a, base + i)) for i, a in enumerate(attrs)])
    return attrs, images


# ----------------------------------------------------------------------------------------------------------
# The pixel-level judge: reads the attributes back from an image without any learned model.

_PALETTE = np.array(list(COLOURS.values()), dtype=np.float32)
_PALETTE_NAMES = list(COLOURS)
_POSITION_CENTRES = np.array(list(POSITIONS.values()), dtype=np.float32)
_POSITION_NAMES = list(POSITIONS)


def _nearest_colour(rgb: np.ndarray) -> str:
    return _PALETTE_NAMES[int(np.argmin(((_PALETTE - rgb) ** 2).sum(-1)))]


def judge_image(image: np.ndarray | Image.Image) -> dict[str, str | None]:
    """Read background, shape colour, position and shape class from a 64x64 image.

    background = nearest palette colour to the median of the 2-pixel border; the shape = pixels further than a
    fixed distance from the background colour; its colour = nearest palette colour to their median; position =
    nearest nominal centre to their bounding-box centre; shape class from the fill ratio of their bounding box (square ~1,
    circle ~pi/4, triangle ~1/2). An attribute that cannot be read (no shape pixels) is None.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.shape != (SIZE, SIZE, 3):
        raise ValueError(f"expected a {SIZE}x{SIZE} RGB image, got shape {x.shape}")
    border = np.concatenate([x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3), x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)])
    bg_rgb = np.median(border, axis=0)
    background = _nearest_colour(bg_rgb)
    distance = np.sqrt(((x - _PALETTE[_PALETTE_NAMES.index(background)]) ** 2).sum(-1))
    mask = distance > 35.0  # half the closest palette pair (orange-yellow, 71)
    result: dict[str, str | None] = {"background": background, "colour": None, "position": None, "shape": None}
    if mask.sum() < 20:  # no shape drawn (a 14-px triangle still covers ~90 px)
        return result
    result["colour"] = _nearest_colour(np.median(x[mask], axis=0))
    ys, xs = np.nonzero(mask)
    # The bounding-box centre, not the centroid: a triangle's centroid sits a third of its height low.
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    box_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    result["position"] = _POSITION_NAMES[int(np.argmin(((_POSITION_CENTRES - box_centre) ** 2).sum(-1)))]
    fill = mask.sum() / ((x1 - x0 + 1) * (y1 - y0 + 1))
    result["shape"] = "square" if fill > 0.89 else "circle" if fill > 0.64 else "triangle"
    return result

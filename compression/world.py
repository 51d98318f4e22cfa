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

    def replace(self, **changes: str) -> Attributes:
        return Attributes(**{**self.__dict__, **changes})


def caption(a: Attributes) -> str:
    return f"a {a.colour} {a.shape} {a.position} on a {a.background} background"


def all_attributes() -> list[Attributes]:
    """Every combination the grammar allows (8 colours x 3 shapes x 5 positions x 7 backgrounds = 840)."""
    return [Attributes(c, s, p, b) for c, s, p, b in itertools.product(COLOURS, SHAPES, POSITIONS, COLOURS) if c != b]


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


def _largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 4-connected region of a boolean mask (a stray pixel must not stretch the bounding box)."""
    labels = np.zeros(mask.shape, dtype=np.int32)
    best, best_size, current = 0, 0, 0
    for y0, x0 in zip(*np.nonzero(mask)):
        if labels[y0, x0]:
            continue
        current += 1
        labels[y0, x0] = current
        stack, size = [(y0, x0)], 0
        while stack:
            y, x = stack.pop()
            size += 1
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1] and mask[ny, nx] and not labels[ny, nx]:
                    labels[ny, nx] = current
                    stack.append((ny, nx))
        if size > best_size:
            best, best_size = current, size
    return labels == best


def judge_image(image: np.ndarray | Image.Image) -> dict[str, str | None]:
    """Read background, shape colour, position and shape class from a 64x64 image.

    background = nearest palette colour to the median of the 2-pixel border; shape colour = nearest other
    palette colour to the median of the pixels far from the background (more than half the closest palette
    distance); the shape = the largest connected region of pixels nearer the shape colour than the background
    (a half-way edge, so a slightly blurred image keeps the shape's area); position = nearest nominal centre to
    its bounding-box centre; shape class: a triangle (pointing up) holds about a quarter of its area in the top
    half of its box, circles and squares half; then the fill ratio of the box tells square (1) from circle (pi/4).
    An attribute that cannot be read (no shape pixels) is None.
    """
    x = np.asarray(image, dtype=np.float32)
    if x.shape != (SIZE, SIZE, 3):
        raise ValueError(f"expected a {SIZE}x{SIZE} RGB image, got shape {x.shape}")
    border = np.concatenate(
        [x[:2].reshape(-1, 3), x[-2:].reshape(-1, 3), x[:, :2].reshape(-1, 3), x[:, -2:].reshape(-1, 3)]
    )
    background = _nearest_colour(np.median(border, axis=0))
    bg_rgb = _PALETTE[_PALETTE_NAMES.index(background)]
    far = np.sqrt(((x - bg_rgb) ** 2).sum(-1)) > 35.0  # half the closest palette pair (orange-yellow, 71)
    result: dict[str, str | None] = {"background": background, "colour": None, "position": None, "shape": None}
    if far.sum() < 20:  # no shape drawn (a 14-px triangle still covers ~90 px)
        return result
    others = [i for i, name in enumerate(_PALETTE_NAMES) if name != background]
    median = np.median(x[far], axis=0)
    colour_index = others[int(np.argmin(((_PALETTE[others] - median) ** 2).sum(-1)))]
    result["colour"] = _PALETTE_NAMES[colour_index]
    nearer_shape = ((x - _PALETTE[colour_index]) ** 2).sum(-1) < ((x - bg_rgb) ** 2).sum(-1)
    mask = _largest_component(nearer_shape)
    ys, xs = np.nonzero(mask)
    # The bounding-box centre, not the centroid: a triangle's centroid sits a third of its height low.
    y0, y1, x0, x1 = ys.min(), ys.max(), xs.min(), xs.max()
    box_centre = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    result["position"] = _POSITION_NAMES[int(np.argmin(((_POSITION_CENTRES - box_centre) ** 2).sum(-1)))]
    box = mask[y0 : y1 + 1, x0 : x1 + 1]
    half = box.shape[0] // 2
    # An upright triangle holds a quarter of its area in the top half of its box; circles and squares half.
    top_share = box[:half].sum() / max(1, box[:half].sum() + box[box.shape[0] - half :].sum())
    fill = box.mean()
    result["shape"] = "triangle" if top_share < 0.38 else "square" if fill > 0.88 else "circle"
    return result

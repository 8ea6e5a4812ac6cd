"""Synthetic detection dataset ("synthetic_shapes"): the seeded shape sampler and renderer.

No public dataset can be downloaded where this project is built and tested, so it embeds its
own. The data is designed so that *localization precision matters*:

* six classes of filled shapes (:data:`CLASS_NAMES`): rectangle, ellipse, triangle, ring,
  cross and diamond;
* a wide range of scale (the longer side of a shape's drawn box is log-uniform between
  ``min_size`` = 12 px and ``max_size_frac`` = 80 % of the shorter image side, so 12-102 px
  on the default 128 px images) and of aspect ratio (log-uniform up to 1:6 for rectangles and
  ellipses, less for the other classes, in either orientation), so that there are both small
  objects and thin bars;
* textured, noisy backgrounds: a two-colour linear gradient, low-frequency texture, a few
  distractor lines and soft blobs that are *not* objects, and per-pixel noise over the whole
  image at the end;
* colours drawn at random with a minimum (but otherwise varied) contrast to what lies under
  the shape and to the objects it overlaps;
* 1-6 objects per image, drawn in order, later over earlier, so objects overlap and occlude;
* boxes that are tight to the *visible* pixels of each object.

Occlusion rule. Each shape is drawn into an ownership map (later shapes overwrite earlier
ones); an object's visible mask is the set of pixels it still owns at the end. A new shape is
accepted only if every earlier object keeps at least ``min_visible_frac`` (30 %) of its drawn
pixels, at least ``min_visible_pixels`` pixels and a visible box of at least
``min_visible_side`` px on each side; otherwise that placement is rejected and another shape
is sampled (up to ``max_placement_tries`` times, after which the object is skipped). So every
annotated object is sufficiently visible *and* every drawn object is annotated (no unlabeled
shape pixels in an image).

Determinism: image ``i`` of split ``s`` is drawn from
``numpy.random.default_rng([seed, crc32(s), i])``, so the same seed gives the same bytes of
json and PNGs, train and val use different streams derived from the same base seed, and the
first ``n`` images do not depend on how many images are generated.

Every annotated object has a non-empty visible mask (``min_visible_pixels >= 1``), so its tight
box (:func:`mask_to_bbox`) is at least 1 px wide and high. :mod:`.coco_writer` writes the rendered
samples as COCO json + PNGs; this module needs only numpy and Pillow.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "CLASS_NAMES",
    "GENERATOR_VERSION",
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SEED",
    "SyntheticShapesParams",
    "SyntheticObject",
    "render_sample",
    "mask_to_bbox",
    "sample_rng",
]

#: Bump when the drawing code changes, so stale generated folders are not reused.
GENERATOR_VERSION = 1

#: Category names; category ids in the json are ``1 .. len(CLASS_NAMES)`` in this order.
CLASS_NAMES: Tuple[str, ...] = ("rectangle", "ellipse", "triangle", "ring", "cross", "diamond")

# Largest aspect ratio (long side / short side of the drawn box) per class, and the smallest
# short side in px that still renders the shape recognisably (a ring needs room for its hole).
_MAX_ASPECT = {
    "rectangle": 6.0,
    "ellipse": 6.0,
    "triangle": 4.0,
    "ring": 3.0,
    "cross": 3.0,
    "diamond": 4.0,
}
_MIN_SHORT_SIDE = {
    "rectangle": 3,
    "ellipse": 3,
    "triangle": 5,
    "ring": 9,
    "cross": 7,
    "diamond": 5,
}

DEFAULT_IMAGE_SIZE = (128, 128)
DEFAULT_SEED = 0


@dataclass(frozen=True)
class SyntheticShapesParams:
    """Knobs of the image sampler (everything except split, image count and seed).

    All of them enter the hash in the output folder name, so changing any of them makes
    :func:`~iou_aware.data.coco_writer.generate_synthetic_dataset` write a new folder instead of
    reusing a stale one.
    """

    image_size: Tuple[int, int] = DEFAULT_IMAGE_SIZE  # (H, W)
    min_objects: int = 1
    max_objects: int = 6
    min_size: float = 12.0  # smallest long side of a drawn shape, px
    max_size_frac: float = 0.8  # largest long side, as a fraction of min(H, W)
    min_visible_frac: float = 0.3  # occlusion rule: visible / drawn pixels
    min_visible_pixels: int = 8
    min_visible_side: int = 2  # visible box must be at least this many px wide and high
    min_contrast: float = 60.0  # RGB distance of a shape's colour to what lies under it
    max_placement_tries: int = 25
    noise_sigma: Tuple[float, float] = (2.0, 9.0)  # final per-pixel noise, range of sigma
    texture_amplitude: Tuple[float, float] = (4.0, 24.0)
    max_distractor_lines: int = 4
    max_distractor_blobs: int = 3

    def __post_init__(self):
        h, w = (int(v) for v in self.image_size)
        if h < 16 or w < 16:
            raise ValueError(f"image_size must be at least 16x16, got {self.image_size}")
        object.__setattr__(self, "image_size", (h, w))
        if not 1 <= self.min_objects <= self.max_objects:
            raise ValueError("need 1 <= min_objects <= max_objects")
        if self.min_size < 3 or self.min_size > self.max_size_frac * min(h, w):
            raise ValueError("need 3 <= min_size <= max_size_frac * min(image_size)")
        # An object must keep a visible pixel: an empty visible mask has no box (a zero-width
        # ground truth box, which no detection can match; see coco_writer).
        if self.min_visible_pixels < 1 or self.min_visible_side < 1:
            raise ValueError(
                "min_visible_pixels and min_visible_side must be >= 1, got "
                f"{self.min_visible_pixels} and {self.min_visible_side}"
            )


@dataclass
class SyntheticObject:
    """One annotated object of a rendered sample."""

    category_id: int  # 1-based, as in the json
    visible_mask: np.ndarray  # (H, W) bool: pixels of this object visible in the final image
    drawn_area: int  # pixels of the shape as drawn, before later shapes covered part of it
    color: Tuple[int, int, int] = field(default=(0, 0, 0))

    @property
    def bbox(self) -> List[int]:
        return mask_to_bbox(self.visible_mask)

    @property
    def area(self) -> int:
        return int(self.visible_mask.sum())


def mask_to_bbox(mask: np.ndarray) -> List[int]:
    """Tight COCO box ``[x, y, w, h]`` of a non-empty boolean mask, in pixel units.

    ``w = x_max - x_min + 1``: the box encloses the pixels exactly (pixel ``i`` spans
    ``[i, i + 1)``), like ``pycocotools.mask.toBbox``.
    """
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if len(xs) == 0:
        raise ValueError("empty mask has no box")
    x0, x1, y0, y1 = int(xs[0]), int(xs[-1]), int(ys[0]), int(ys[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of image ``index`` of ``split`` (independent of the image count)."""
    return np.random.default_rng([int(seed), zlib.crc32(split.encode("utf-8")), int(index)])


# ---------------------------------------------------------------------------------------------
# Drawing
# ---------------------------------------------------------------------------------------------


def _background(rng: np.random.Generator, p: SyntheticShapesParams) -> np.ndarray:
    """Float (H, W, 3) background: gradient + low-frequency texture + distractors."""
    h, w = p.image_size
    c0 = rng.uniform(0, 255, size=3)
    c1 = rng.uniform(0, 255, size=3)
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = (c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]).astype(
        np.float32
    )

    # Low-frequency texture: a coarse random grid upsampled smoothly, per channel.
    amp = rng.uniform(*p.texture_amplitude)
    gh, gw = int(rng.integers(3, 9)), int(rng.integers(3, 9))
    grid = rng.normal(0.0, 1.0, size=(gh, gw, 3))
    for c in range(3):
        layer = Image.fromarray(grid[..., c].astype(np.float32), mode="F")
        img[..., c] += amp * np.asarray(layer.resize((w, h), Image.BICUBIC), dtype=np.float32)

    # Soft blobs (Gaussian falloff, so unlike the hard-edged objects).
    for _ in range(int(rng.integers(0, p.max_distractor_blobs + 1))):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        sigma = rng.uniform(3.0, 0.15 * min(h, w) + 3.0)
        strength = rng.uniform(0.3, 0.8)
        color = rng.uniform(0, 255, size=3)
        wgt = strength * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        wgt = wgt.astype(np.float32)[..., None]
        img = img * (1 - wgt) + color.astype(np.float32)[None, None, :] * wgt

    # Thin distractor lines, drawn into the background (objects are drawn over them).
    n_lines = int(rng.integers(0, p.max_distractor_lines + 1))
    if n_lines:
        canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), mode="RGB")
        draw = ImageDraw.Draw(canvas)
        for _ in range(n_lines):
            x0, x1 = rng.uniform(-0.2 * w, 1.2 * w, size=2)
            y0, y1 = rng.uniform(-0.2 * h, 1.2 * h, size=2)
            color = tuple(int(v) for v in rng.integers(0, 256, size=3))
            draw.line([(x0, y0), (x1, y1)], fill=color, width=int(rng.integers(1, 3)))
        img = np.asarray(canvas, dtype=np.float32)
    return img


def _shape_mask(
    rng: np.random.Generator, cls: str, box: Tuple[int, int, int, int], hw: Tuple[int, int]
) -> np.ndarray:
    """Boolean (H, W) mask of a filled shape of class ``cls`` inside ``box = (x0, y0, w, h)``."""
    x0, y0, bw, bh = box
    x1, y1 = x0 + bw - 1, y0 + bh - 1  # inclusive pixel coordinates
    m = Image.new("L", (hw[1], hw[0]), 0)
    d = ImageDraw.Draw(m)
    if cls == "rectangle":
        d.rectangle([x0, y0, x1, y1], fill=1)
    elif cls == "ellipse":
        d.ellipse([x0, y0, x1, y1], fill=1)
    elif cls == "ring":
        d.ellipse([x0, y0, x1, y1], fill=1)
        frac = rng.uniform(0.2, 0.4)  # ring thickness as a fraction of each half-axis
        tx, ty = max(2.0, frac * bw / 2), max(2.0, frac * bh / 2)
        if bw - 2 * tx >= 2 and bh - 2 * ty >= 2:
            d.ellipse([x0 + tx, y0 + ty, x1 - tx, y1 - ty], fill=0)
    elif cls == "triangle":
        kind = int(rng.integers(0, 5))
        if kind < 4:  # isosceles-ish: apex on one side, base on the opposite side
            a = rng.uniform(0.0, 1.0)
            if kind == 0:  # apex up
                pts = [(x0 + a * (bw - 1), y0), (x0, y1), (x1, y1)]
            elif kind == 1:  # apex down
                pts = [(x0 + a * (bw - 1), y1), (x0, y0), (x1, y0)]
            elif kind == 2:  # apex left
                pts = [(x0, y0 + a * (bh - 1)), (x1, y0), (x1, y1)]
            else:  # apex right
                pts = [(x1, y0 + a * (bh - 1)), (x0, y0), (x0, y1)]
        else:  # right triangle in a random corner
            corners = [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
            k = int(rng.integers(0, 4))
            pts = [corners[k], corners[(k + 1) % 4], corners[(k + 3) % 4]]
        d.polygon(pts, fill=1)
    elif cls == "cross":
        # Plus sign: a vertical and a horizontal bar, each 22-45 % thick, slightly off-centre.
        vw = max(2, int(round(rng.uniform(0.22, 0.45) * bw)))
        hh = max(2, int(round(rng.uniform(0.22, 0.45) * bh)))
        cx = x0 + int(round(rng.uniform(0.35, 0.65) * (bw - vw)))
        cy = y0 + int(round(rng.uniform(0.35, 0.65) * (bh - hh)))
        d.rectangle([cx, y0, cx + vw - 1, y1], fill=1)
        d.rectangle([x0, cy, x1, cy + hh - 1], fill=1)
    elif cls == "diamond":
        mx, my = (x0 + x1) / 2.0, (y0 + y1) / 2.0
        d.polygon([(mx, y0), (x1, my), (mx, y1), (x0, my)], fill=1)
    else:  # pragma: no cover - CLASS_NAMES is closed
        raise ValueError(cls)
    return np.asarray(m, dtype=np.uint8).astype(bool)


def _sample_box(
    rng: np.random.Generator, cls: str, p: SyntheticShapesParams
) -> Tuple[int, int, int, int]:
    """Drawn box ``(x0, y0, w, h)``: log-uniform long side and aspect ratio, random position."""
    h, w = p.image_size
    max_long = p.max_size_frac * min(h, w)
    long_side = float(np.exp(rng.uniform(np.log(p.min_size), np.log(max_long))))
    aspect = float(np.exp(rng.uniform(0.0, np.log(_MAX_ASPECT[cls]))))
    short_side = max(long_side / aspect, float(_MIN_SHORT_SIDE[cls]))
    long_side = max(long_side, short_side)
    if rng.random() < 0.5:
        bw, bh = long_side, short_side
    else:
        bw, bh = short_side, long_side
    bw = int(min(max(round(bw), 1), w))
    bh = int(min(max(round(bh), 1), h))
    x0 = int(rng.integers(0, w - bw + 1))
    y0 = int(rng.integers(0, h - bh + 1))
    return x0, y0, bw, bh


def _sample_color(
    rng: np.random.Generator, references: Sequence[np.ndarray], min_contrast: float
) -> np.ndarray:
    """A random RGB colour at least ``min_contrast`` (Euclidean) from every reference colour.

    Falls back to the best of the candidates tried when no candidate qualifies.
    """
    best, best_d = None, -1.0
    for _ in range(40):
        c = rng.integers(0, 256, size=3).astype(np.float64)
        d = min((float(np.linalg.norm(c - r)) for r in references), default=np.inf)
        if d >= min_contrast:
            return c
        if d > best_d:
            best, best_d = c, d
    return best


def render_sample(
    rng: np.random.Generator, params: Optional[SyntheticShapesParams] = None
) -> Tuple[np.ndarray, List[SyntheticObject]]:
    """Draw one image and its objects.

    Returns:
        image: (H, W, 3) uint8 RGB.
        objects: the annotated objects in drawing order (back to front), each with its
            visible mask; every drawn shape is annotated.
    """
    p = params or SyntheticShapesParams()
    h, w = p.image_size
    img = _background(rng, p)
    owner = np.full((h, w), -1, dtype=np.int32)
    drawn_area: List[int] = []
    classes: List[int] = []
    colors: List[np.ndarray] = []

    n_objects = int(rng.integers(p.min_objects, p.max_objects + 1))
    for _ in range(n_objects):
        for _try in range(p.max_placement_tries):
            cls_idx = int(rng.integers(0, len(CLASS_NAMES)))
            box = _sample_box(rng, CLASS_NAMES[cls_idx], p)
            mask = _shape_mask(rng, CLASS_NAMES[cls_idx], box, (h, w))
            area = int(mask.sum())
            if area < p.min_visible_pixels:
                continue
            if _keeps_earlier_visible(owner, mask, drawn_area, p):
                break
        else:
            continue  # no acceptable placement: skip this object
        k = len(drawn_area)
        # Contrast against what lies under the shape (background mean under the mask) and
        # against every earlier object it overlaps or touches.
        under = owner[_dilate(mask)]
        refs = [img[mask].mean(axis=0)]
        refs += [colors[j] for j in np.unique(under[under >= 0])]
        color = _sample_color(rng, refs, p.min_contrast)
        img[mask] = color
        owner[mask] = k
        drawn_area.append(area)
        classes.append(cls_idx)
        colors.append(color)

    sigma = rng.uniform(*p.noise_sigma)
    img = img + rng.standard_normal(size=img.shape, dtype=np.float32) * np.float32(sigma)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    objects = [
        SyntheticObject(
            category_id=classes[k] + 1,
            visible_mask=owner == k,
            drawn_area=drawn_area[k],
            color=tuple(int(v) for v in colors[k]),
        )
        for k in range(len(drawn_area))
    ]
    return image, objects


def _dilate(mask: np.ndarray) -> np.ndarray:
    """3x3 binary dilation (4-neighbourhood plus the pixel itself)."""
    out = mask.copy()
    out[1:, :] |= mask[:-1, :]
    out[:-1, :] |= mask[1:, :]
    out[:, 1:] |= mask[:, :-1]
    out[:, :-1] |= mask[:, 1:]
    return out


def _keeps_earlier_visible(
    owner: np.ndarray, mask: np.ndarray, drawn_area: Sequence[int], p: SyntheticShapesParams
) -> bool:
    """Whether drawing ``mask`` on top leaves every earlier object visible enough."""
    if not drawn_area:
        return True
    covered = np.unique(owner[mask])
    covered = covered[covered >= 0]
    if len(covered) == 0:
        return True
    new_owner = np.where(mask, -1, owner)
    for j in covered:
        vis = new_owner == j
        n = int(vis.sum())
        if n < p.min_visible_pixels or n < p.min_visible_frac * drawn_area[j]:
            return False
        _, _, bw, bh = mask_to_bbox(vis)
        if bw < p.min_visible_side or bh < p.min_visible_side:
            return False
    return True


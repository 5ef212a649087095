"""The embedded synthetic dataset: a small weakly supervised segmentation problem in the schema
of :mod:`agen_hf.data.schema`, made on the fly so that every recipe runs on a machine without
VOC.

20 object classes (:data:`SYNTHETIC_CLASS_NAMES`, "<shape>-<emblem>") come in ten twin pairs.
Twins share a shape family (ellipse, box, triangle, diamond, cross, ring, star, crescent,
hexagon, L) and a body texture (stripes, checks, dots, waves, speckle; the twins' frequencies
differ slightly); the body colour is drawn from a palette shared by all classes. What tells
twins apart is a small emblem near one end of the object: a disk or a square in the class's own
colour. The emblem is the most discriminative part, so a classifier's CAMs peak there and cover
the body only partly: the problem AGEN addresses.

Per instance: scale, aspect, rotation, colour jitter, emblem position jitter; 1 to 3 classes per
image, 1 or 2 instances each; textured backgrounds with body-coloured distractor blobs and lines,
some drawn over objects (occlusion, and the objects' mask follows). Masks are exact with a thin
255 band on every boundary, as VOC's. Image ``i`` depends only on ``(seed, i)``.
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing as mp
import os
from functools import partial
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ..labels import IGNORE_INDEX, voc_palette
from .cache import cached_arrow, default_cache_dir
from .schema import features

_VERSION = "4"  # 4: labels as class indices (the images and masks are those of 3)
_FAMILIES = (
    "ellipse",
    "box",
    "triangle",
    "diamond",
    "cross",
    "ring",
    "star",
    "crescent",
    "hexagon",
    "ell",
)
# class 2f + t: shape family f with a disk (t = 0) or a square (t = 1) emblem
SYNTHETIC_CLASS_NAMES = tuple(
    f"{family}-{emblem}" for family in _FAMILIES for emblem in ("disk", "square")
)
NUM_CLASSES = len(SYNTHETIC_CLASS_NAMES)
FEATURES = features(SYNTHETIC_CLASS_NAMES)
_BODY_PALETTE = np.array(
    [[200, 60, 50], [60, 140, 200], [90, 170, 70], [210, 170, 60], [150, 90, 170], [120, 120, 120]],
    dtype=np.float32,
)
_EMBLEM_COLOURS = np.array(
    [  # one per class; twins (2f, 2f+1) get far-apart colours
        [255, 255, 255],
        [20, 20, 20],
        [255, 230, 0],
        [0, 0, 160],
        [0, 230, 230],
        [150, 0, 0],
        [255, 0, 200],
        [0, 110, 0],
        [255, 140, 0],
        [110, 0, 160],
        [0, 90, 255],
        [255, 180, 180],
        [0, 200, 80],
        [120, 70, 20],
        [180, 0, 0],
        [150, 255, 150],
        [255, 255, 140],
        [0, 130, 130],
        [200, 120, 255],
        [90, 90, 0],
    ],
    dtype=np.float32,
)


def _shape(family: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside-test of shape family in local coordinates (the shape spans about [-1, 1]^2)."""
    r = np.hypot(u, v)
    if family == 0:
        return r < 1
    if family == 1:
        return (np.abs(u) < 1) & (np.abs(v) < 0.65)
    if family == 2:
        return (v < 0.8) & (np.abs(u) < (0.8 - v) * 0.6)
    if family == 3:
        return np.abs(u) + np.abs(v) < 1
    if family == 4:
        return ((np.abs(u) < 0.32) & (np.abs(v) < 1)) | ((np.abs(v) < 0.32) & (np.abs(u) < 1))
    if family == 5:
        return (r < 1) & (r > 0.55)
    if family == 6:
        return r < 0.55 + 0.4 * np.cos(5 * np.arctan2(v, u))
    if family == 7:
        return (r < 1) & (np.hypot(u - 0.55, v) > 0.7)
    if family == 8:
        return np.maximum(np.abs(u) * 0.866 + np.abs(v) * 0.5, np.abs(v)) < 0.9
    return ((np.abs(u) < 1) & (v > 0.35) & (v < 1)) | ((u > -1) & (u < -0.35) & (np.abs(v) < 1))


# where each family's emblem sits, in local coordinates (inside the body)
_EMBLEM_AT = [
    (0, -0.5),
    (-0.55, 0),
    (0, 0.35),
    (0, -0.5),
    (0, -0.6),
    (0, -0.77),
    (0, 0),
    (-0.55, 0),
    (0.4, 0.2),
    (-0.67, -0.4),
]


def _texture(kind: int, freq: float, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """A [0, 1] pattern over the body, in local coordinates so it turns with the object."""
    if kind == 0:
        return 0.5 + 0.5 * np.sin(freq * u * np.pi)
    if kind == 1:
        return ((np.floor(freq * u) + np.floor(freq * v)) % 2).astype(np.float32)
    if kind == 2:
        return (np.hypot((freq * u) % 1 - 0.5, (freq * v) % 1 - 0.5) < 0.3).astype(np.float32)
    if kind == 3:
        return 0.5 + 0.5 * np.sin(freq * np.pi * (u + 0.3 * np.sin(3 * v)))
    return 0.5 + 0.5 * np.sin(freq * 3.1 * u) * np.sin(freq * 2.3 * v)


def _local(xs, ys, cx, cy, scale, aspect, angle):
    c, s = np.cos(angle), np.sin(angle)
    dx, dy = xs - cx, ys - cy
    return (dx * c + dy * s) / (scale * aspect), (-dx * s + dy * c) / (scale / aspect)


def _background(rng: np.random.Generator, xs, ys, size: int) -> np.ndarray:
    base = rng.uniform(40, 200, 3).astype(np.float32)
    img = np.broadcast_to(base, (size, size, 3)).copy()
    for _ in range(3):  # low-frequency colour waves
        k = rng.uniform(0.5, 4) * 2 * np.pi / size
        a = rng.uniform(0, np.pi)
        wave = np.sin(k * (xs * np.cos(a) + ys * np.sin(a)) + rng.uniform(0, 6.3))
        img += wave[..., None] * rng.uniform(-30, 30, 3).astype(np.float32)
    if rng.random() < 0.5:  # a fine background texture
        img += _texture(int(rng.integers(5)), rng.uniform(0.05, 0.2), xs, ys)[
            ..., None
        ] * rng.uniform(-25, 25, 3).astype(np.float32)
    return img


def _distractor(rng: np.random.Generator, xs, ys, size: int):
    """A blob or a bar in a body colour: background clutter that is no class."""
    cx, cy = rng.uniform(0, size, 2)
    scale = rng.uniform(0.04, 0.14) * size
    u, v = _local(xs, ys, cx, cy, scale, rng.uniform(0.5, 2), rng.uniform(0, np.pi))
    inside = (u * u + v * v < 1) if rng.random() < 0.6 else (np.abs(u) < 2.5) & (np.abs(v) < 0.2)
    colour = _BODY_PALETTE[rng.integers(len(_BODY_PALETTE))] + rng.normal(0, 15, 3)
    return inside, colour


def render_sample(
    index: int, seed: int = 0, image_size: int = 128, min_classes: int = 1, max_classes: int = 3
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Image (S, S, 3) uint8, mask (S, S) uint8 (0 background, class k as k + 1, 255) and the
    visible classes k (sorted indices into :data:`SYNTHETIC_CLASS_NAMES`)."""
    rng = np.random.default_rng([seed, index])
    size = image_size
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    img = _background(rng, xs, ys, size)
    label = np.zeros((size, size), dtype=np.uint8)
    for _ in range(int(rng.integers(2, 6))):  # clutter under the objects
        inside, colour = _distractor(rng, xs, ys, size)
        img[inside] = colour

    classes = rng.choice(
        NUM_CLASSES, size=int(rng.integers(min_classes, max_classes + 1)), replace=False
    )
    instances = [c for c in classes for _ in range(1 + int(rng.random() < 0.3))]
    rng.shuffle(instances)
    for c in instances:
        family, twin = divmod(int(c), 2)
        scale = rng.uniform(0.16, 0.32) * size
        cx, cy = rng.uniform(0.1, 0.9, 2) * size
        aspect, angle = rng.uniform(0.75, 1.33), rng.uniform(0, 2 * np.pi)
        u, v = _local(xs, ys, cx, cy, scale, aspect, angle)
        body = _shape(family, u, v)
        colour = _BODY_PALETTE[rng.integers(len(_BODY_PALETTE))] * rng.uniform(
            0.8, 1.2
        ) + rng.normal(0, 10, 3)
        pattern = _texture(family % 5, 2.0 + 1.5 * twin + rng.uniform(-0.3, 0.3), u, v)
        shade = 0.65 + 0.35 * pattern[..., None]
        img[body] = (colour * shade)[body]
        eu, ev = _EMBLEM_AT[family]
        eu, ev = eu + rng.uniform(-0.08, 0.08), ev + rng.uniform(-0.08, 0.08)
        radius = 0.36 * rng.uniform(0.85, 1.15)
        du, dv = u - eu, v - ev
        emblem = (
            (du * du + dv * dv < radius**2)
            if twin == 0
            else (np.abs(du) < radius * 0.9) & (np.abs(dv) < radius * 0.9)
        )
        emblem &= body
        img[emblem] = _EMBLEM_COLOURS[c] * rng.uniform(0.85, 1.0)
        label[body] = c + 1
    for _ in range(int(rng.integers(0, 3))):  # clutter over the objects: occlusion
        inside, colour = _distractor(rng, xs, ys, size)
        img[inside] = colour
        label[inside] = 0
    img += rng.normal(0, 6, img.shape).astype(np.float32)

    mask = label.copy()
    padded = np.pad(label, 1, mode="edge")
    edge = np.zeros_like(label, dtype=bool)
    for dy in (0, 1, 2):
        for dx in (0, 1, 2):
            edge |= padded[dy : dy + size, dx : dx + size] != label
    mask[edge] = IGNORE_INDEX
    labels = (np.unique(label[label > 0]).astype(np.int64) - 1).tolist()  # an instance
    return np.clip(img, 0, 255).astype(np.uint8), mask, labels  # hidden by clutter is no label


def _png(array: np.ndarray, palette: bool) -> bytes:
    img = Image.fromarray(array, mode="P" if palette else "RGB")
    if palette:
        img.putpalette(voc_palette())
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def make_synthetic(
    num_images: int = 1000,
    seed: int = 0,
    image_size: int = 128,
    *,
    min_classes: int = 1,
    max_classes: int = 3,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """``num_images`` synthetic samples in the schema, classes :data:`SYNTHETIC_CLASS_NAMES`
    (ids ``synthetic-<seed>-<i>``), deterministic per ``(seed, i)``, cached as Arrow under
    ``cache_dir`` (default: the datasets cache). Images without a visible foreground class are
    redrawn (index + k * num_images)."""
    if num_images < 1:
        raise ValueError(f"num_images: must be >= 1, got {num_images}")
    if image_size < 32:
        raise ValueError(f"image_size: must be >= 32, got {image_size}")
    if not 1 <= min_classes <= max_classes <= NUM_CLASSES:
        raise ValueError(
            f"min_classes/max_classes: need 1 <= {min_classes} <= {max_classes} <= {NUM_CLASSES}"
        )
    key = hashlib.sha1(
        repr((_VERSION, num_images, seed, image_size, min_classes, max_classes)).encode()
    ).hexdigest()[:16]
    return cached_arrow(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        f"synthetic-{key}",
        lambda: _build(num_images, seed, image_size, min_classes, max_classes),
    )


def _build(
    num_images: int, seed: int, image_size: int, min_classes: int, max_classes: int
) -> datasets.Dataset:
    """Every sample rendered and PNG-encoded, split over the CPU cores this process may use
    (each sample depends only on ``(seed, i)``: the same dataset on any number of cores)."""
    work = partial(
        _encoded_range,
        seed=seed,
        image_size=image_size,
        min_classes=min_classes,
        max_classes=max_classes,
        num_images=num_images,
    )
    workers = min(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1, 8)
    chunk = 250
    ranges = [range(i, min(i + chunk, num_images)) for i in range(0, num_images, chunk)]
    if workers > 1 and len(ranges) > 1 and "fork" in mp.get_all_start_methods():
        # forked workers run numpy and PIL only (no torch, no threads of their own)
        with mp.get_context("fork").Pool(min(workers, len(ranges))) as pool:
            parts = pool.map(work, ranges)
    else:
        parts = [work(r) for r in ranges]
    rows = {"id": [], "image": [], "labels": [], "mask": []}
    for part in parts:
        for key in rows:
            rows[key].extend(part[key])
    return datasets.Dataset.from_dict(rows, features=FEATURES)


def _encoded_range(
    indices: range, seed: int, image_size: int, min_classes: int, max_classes: int, num_images: int
) -> dict[str, list]:
    """Samples ``indices`` as rows of the schema (PNG bytes); an image without a visible
    foreground class is redrawn (index + k * num_images)."""
    rows = {"id": [], "image": [], "labels": [], "mask": []}
    for i in indices:
        draw = i
        while True:
            img, mask, labels = render_sample(draw, seed, image_size, min_classes, max_classes)
            if labels:
                break
            draw += num_images
        rows["id"].append(f"synthetic-{seed}-{i}")
        rows["image"].append({"bytes": _png(img, palette=False), "path": None})
        rows["mask"].append({"bytes": _png(mask, palette=True), "path": None})
        rows["labels"].append(labels)
    return rows

"""One sample of the schema (:mod:`agen_hf.data.schema`): checks and decoding shared by the
loaders, the transforms and the validator. Every problem is a :class:`DataError` naming the
file."""

from __future__ import annotations

import io
import re

import datasets
import numpy as np
from PIL import Image, UnidentifiedImageError

from ..labels import IGNORE_INDEX, MAX_CLASSES


class DataError(ValueError):
    """A bad sample: ``path`` is the file at fault, ``problem`` what is wrong with it."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path = path
        self.problem = problem


VocDataError = DataError  # the name of agen_hf <= 0.1's VOC-only loader

_SKIPPED = re.compile(r"; skipped: (\d+)$")


def describe(ds: datasets.Dataset, text: str, skipped: int) -> datasets.Dataset:
    """Set ``ds``'s description to ``text`` and the number of bad samples the loader skipped
    (``skip_bad_samples``), which :func:`skipped_when_loaded` reads back (the description
    survives the Arrow cache)."""
    ds.info.description = f"{text}; skipped: {skipped}"
    return ds


def skipped_when_loaded(ds: datasets.Dataset | None) -> int:
    """How many bad samples the loader of ``ds`` skipped (0 when it does not say)."""
    found = _SKIPPED.search((ds.info.description or "") if ds is not None else "")
    return int(found.group(1)) if found else 0


def open_image(source: dict | str, role: str) -> tuple[Image.Image, str]:
    """Open (header only) an image given as a path or a ``datasets.Image`` storage dict."""
    if isinstance(source, str):
        path, data = source, None
    else:
        path, data = source.get("path") or f"<{role} bytes>", source.get("bytes")
    try:
        img = Image.open(io.BytesIO(data)) if data is not None else Image.open(path)
    except FileNotFoundError:
        raise DataError(path, f"{role} file is missing") from None
    except Image.DecompressionBombError as e:  # PIL's limit: MAX_IMAGE_PIXELS x 2
        raise DataError(path, f"refused as a decompression bomb ({e})") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(path, f"cannot be read as an image ({e})") from None
    return img, path


def check_image_header(img: Image.Image, path: str) -> None:
    if img.mode != "RGB":
        kind = {
            "I;16": "16-bit",
            "I": "32-bit integer",
            "I;16B": "16-bit",
            "CMYK": "CMYK",
            "L": "grayscale",
            "LA": "grayscale+alpha",
            "RGBA": "RGBA",
            "P": "palette",
            "1": "1-bit",
        }.get(img.mode, img.mode)
        raise DataError(path, f"{kind} image (mode {img.mode!r}); expected 8-bit RGB")


def mask_values(mask: np.ndarray, path: str, num_classes: int | None = None) -> np.ndarray:
    """Unique values of a decoded mask, checked to lie in 0..num_classes (C, the dataset's
    foreground classes; None: any class value) or 255."""
    num_classes = MAX_CLASSES if num_classes is None else num_classes
    values = np.unique(mask)
    bad = values[(values > num_classes) & (values != IGNORE_INDEX)]
    if bad.size:
        raise DataError(
            path, f"mask values {bad.tolist()} outside 0..{num_classes} and {IGNORE_INDEX}"
        )
    return values


def decode_mask(source: dict | str, num_classes: int | None = None) -> np.ndarray:
    """Decode a class-index mask (palette ``P`` or grayscale ``L`` PNG) to (H, W) uint8."""
    img, path = open_image(source, "mask")
    if img.mode not in ("P", "L"):
        raise DataError(
            path,
            f"mask mode {img.mode!r}; expected a palette (P) or 8-bit (L) PNG of class indices",
        )
    try:
        mask = np.array(img, dtype=np.uint8)
    except OSError as e:
        raise DataError(path, f"truncated or corrupt mask ({e})") from None
    mask_values(mask, path, num_classes)
    return mask


def decode_image(source: dict | str) -> Image.Image:
    """Fully decode an RGB image, or raise naming the file and the problem."""
    img, path = open_image(source, "image")
    check_image_header(img, path)
    try:
        img.load()
    except OSError as e:
        raise DataError(path, f"truncated or corrupt image ({e})") from None
    return img


def decode_sample(
    image: dict | str, mask: dict | str | None, num_classes: int | None = None
) -> tuple[Image.Image, np.ndarray | None]:
    """Decode an image and its mask (if any), checking that their sizes agree."""
    img = decode_image(image)
    if mask is None:
        return img, None
    m = decode_mask(mask, num_classes)
    check_mask_size(
        m, img.size, mask if isinstance(mask, str) else mask.get("path") or "<mask bytes>"
    )
    return img, m


def check_mask_size(mask: np.ndarray, image_size: tuple[int, int], path: str) -> None:
    """A mask (H, W) must match its image's (width, height)."""
    if (mask.shape[1], mask.shape[0]) != tuple(image_size):
        raise DataError(
            path,
            f"mask size {mask.shape[1]}x{mask.shape[0]} differs from image "
            f"size {image_size[0]}x{image_size[1]}",
        )

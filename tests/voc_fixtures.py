"""A tiny VOCdevkit written by the tests, with a switch for every kind of bad sample."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from agen_hf.data import voc_palette


def write_mask(path: Path, mask: np.ndarray) -> None:
    img = Image.fromarray(mask.astype(np.uint8), mode="P")
    img.putpalette(voc_palette())
    img.save(path)


def good_pair(seed: int, size=(48, 40), classes=(1,)):
    rng = np.random.default_rng(seed)
    w, h = size
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for k, c in enumerate(classes):
        mask[4 + 8 * k : 12 + 8 * k, 5:20] = c
    mask[3, 5:20] = 255
    return image, mask


def make_voc(root: Path, bad: str | None = None) -> Path:
    """train: a, b; val: c, d; train_aug: a, b, e (e only in SegmentationClassAug).
    ``bad`` turns sample b into one bad case."""
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    specs = {"a": (1,), "b": (2, 15), "c": (3,), "d": (20,), "e": (7,)}
    for i, (sid, classes) in enumerate(specs.items()):
        image, mask = good_pair(i, classes=classes)
        Image.fromarray(image).save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
        if sid != "e":
            write_mask(root / "SegmentationClass" / f"{sid}.png", mask)
        write_mask(root / "SegmentationClassAug" / f"{sid}.png", mask)
    (root / "ImageSets/Segmentation/train.txt").write_text("a\nb\n")
    (root / "ImageSets/Segmentation/val.txt").write_text("c\nd\n")
    (root / "ImageSets/Segmentation/train_aug.txt").write_text("a\nb\ne\n")
    if bad is not None:
        break_sample(root, "b", bad)
    return root


def write_bomb(path: Path, side: int = 20_000) -> None:
    """A 70-byte PNG whose header declares ``side`` x ``side`` RGB pixels (400 M by default,
    over twice PIL's MAX_IMAGE_PIXELS): PIL refuses it on open as a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def break_sample(root: Path, sid: str, bad: str) -> None:
    jpg = root / "JPEGImages" / f"{sid}.jpg"
    masks = [
        root / "SegmentationClass" / f"{sid}.png",
        root / "SegmentationClassAug" / f"{sid}.png",
    ]
    image, mask = good_pair(1, classes=(2, 15))
    if bad == "truncated":
        data = jpg.read_bytes()
        jpg.write_bytes(data[: len(data) // 2])
    elif bad == "corrupt":
        jpg.write_bytes(b"this is not an image at all" * 10)
    elif bad == "size":
        for m in masks:
            write_mask(m, np.zeros((30, 30), dtype=np.uint8) + 2)
    elif bad == "rgba":
        Image.fromarray(np.dstack([image, image[..., :1]]), mode="RGBA").save(jpg, format="PNG")
    elif bad == "grayscale":
        Image.fromarray(image[..., 0]).save(jpg, format="JPEG")
    elif bad == "16bit":
        Image.fromarray(image[..., 0].astype(np.uint16) * 256).save(jpg, format="PNG")
    elif bad == "cmyk":
        Image.fromarray(image).convert("CMYK").save(jpg, format="JPEG")
    elif bad == "values":
        mask[0, 0] = 30
        for m in masks:
            write_mask(m, mask)
    elif bad == "bomb":
        write_bomb(jpg)
    elif bad == "missing":
        jpg.unlink()
    elif bad == "no_foreground":
        for m in masks:
            write_mask(m, np.where(mask == 255, 255, 0))
    else:
        raise ValueError(bad)


# bad case -> (the problem's words in the error, detected when the index is built?)
BAD_CASES = {
    "truncated": ("truncated or corrupt image", False),
    "bomb": ("refused as a decompression bomb", True),
    "corrupt": ("cannot be read as an image", True),
    "size": ("mask size 30x30 differs from image size 48x40", True),
    "rgba": ("RGBA image", True),
    "grayscale": ("grayscale image", True),
    "16bit": ("image (mode 'I", True),
    "cmyk": ("CMYK image", True),
    "values": ("mask values [30] outside 0..20 and 255", True),
    "missing": ("image is missing", True),
    "no_foreground": ("no foreground class", True),
}


def write_synthetic_voc(root: Path, splits: dict[str, int], image_size: int = 48) -> Path:
    """The embedded synthetic data written out as a VOC root: ``splits`` maps a split name to
    its number of images (train_aug masks in SegmentationClassAug, the others in both)."""
    from agen_hf.data import make_synthetic

    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for k, (split, count) in enumerate(splits.items()):
        ds = make_synthetic(count, seed=100 + k, image_size=image_size)
        ids = []
        for row in ds:
            sid = f"{split}_{row['id']}"
            ids.append(sid)
            row["image"].convert("RGB").save(root / "JPEGImages" / f"{sid}.jpg", quality=95)
            mask = np.array(row["mask"])
            write_mask(root / "SegmentationClassAug" / f"{sid}.png", mask)
            if split != "train_aug":
                write_mask(root / "SegmentationClass" / f"{sid}.png", mask)
        (root / "ImageSets/Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root

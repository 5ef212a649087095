"""A user's own data as the tests write it: a folder of tagged photos of 5 classes (no masks)
and a validation folder with masks, in the datasets imagefolder convention."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("crack", "dent", "hole", "rust", "stain")  # sorted: the order load_folder finds
COLOURS = {
    "crack": (20, 20, 20),
    "dent": (200, 200, 0),
    "hole": (0, 0, 200),
    "rust": (180, 70, 0),
    "stain": (0, 160, 0),
}


def draw(seed: int, tags: list[str], size=(48, 40)) -> tuple[Image.Image, np.ndarray]:
    """An image with one coloured block per tag, and its class-index mask (k + 1 for the
    k-th of CLASSES, 255 on a one-pixel band above each block)."""
    rng = np.random.default_rng(seed)
    w, h = size
    image = rng.integers(90, 160, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=np.uint8)
    for k, tag in enumerate(tags):
        top, left = 3 + 12 * k, int(rng.integers(2, w - 18))
        image[top : top + 9, left : left + 16] = COLOURS[tag]
        mask[top : top + 9, left : left + 16] = CLASSES.index(tag) + 1
        mask[top - 1, left : left + 16] = 255
    return Image.fromarray(image), mask


def make_folder(
    root: Path,
    n: int = 10,
    *,
    masks: bool = False,
    csv: bool = False,
    empty: int = 0,
    seed: int = 0,
) -> Path:
    """``n`` tagged images (1 or 2 tags each, every class used), ``empty`` more with no tag;
    ``masks``: a ``mask_file_name`` column and ``masks/*.png``; ``csv``: metadata.csv with
    tags separated by ';' instead of metadata.jsonl."""
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n + empty):
        tags = [] if i >= n else sorted({CLASSES[i % 5], CLASSES[(i * 3 + seed) % 5]})
        image, mask = draw(seed * 1000 + i, tags)
        image.save(root / f"img{i:02d}.png")
        row = {"file_name": f"img{i:02d}.png", "labels": tags}
        if masks:
            (root / "masks").mkdir(exist_ok=True)
            Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i:02d}.png")
            row["mask_file_name"] = f"masks/img{i:02d}.png"
        rows.append(row)
    if csv:
        lines = ["file_name,labels" + (",mask_file_name" if masks else "")]
        lines += [
            ",".join(
                [r["file_name"], ";".join(r["labels"])] + ([r["mask_file_name"]] if masks else [])
            )
            for r in rows
        ]
        (root / "metadata.csv").write_text("\n".join(lines) + "\n")
    else:
        (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root

"""The VOC index cache's second load at train_aug's size: a VOC root of the packaged 10,582
train_aug ids (16 px images and masks, a quarter of them also in SegmentationClass) written
to a temporary folder, indexed once, then loaded again; the key stats each file the index
reads (size and st_mtime_ns), so that a mask rewritten in place rebuilds the index.

    python bench/index_cache.py [--folder /tmp/voc-index-bench] [--repeats 15]
"""

from __future__ import annotations

import argparse
import io
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agen_hf.data import load_voc, voc_palette
from agen_hf.data.voc import packaged_train_aug_ids


def write_root(root: Path) -> int:
    for d in ("JPEGImages", "SegmentationClass", "SegmentationClassAug", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(buffer, "JPEG")
    jpg = buffer.getvalue()
    mask = np.zeros((16, 16), np.uint8)
    mask[4:8, 4:8] = 3
    palette_mask = Image.fromarray(mask, "P")
    palette_mask.putpalette(voc_palette())
    buffer = io.BytesIO()
    palette_mask.save(buffer, "PNG")
    png = buffer.getvalue()
    ids = packaged_train_aug_ids()
    for k, sample_id in enumerate(ids):
        (root / "JPEGImages" / f"{sample_id}.jpg").write_bytes(jpg)
        (root / "SegmentationClassAug" / f"{sample_id}.png").write_bytes(png)
        if k % 4 == 0:
            (root / "SegmentationClass" / f"{sample_id}.png").write_bytes(png)
    return len(ids)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--folder", help="where to write the root (default: a temporary folder)")
    p.add_argument("--repeats", type=int, default=15)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(args.folder or tmp)
        root, cache = folder / "VOC2012", folder / "cache"
        n = write_root(root) if not (root / "JPEGImages").is_dir() else None
        started = time.perf_counter()
        load_voc(root, "train_aug", cache_dir=cache)
        first = time.perf_counter() - started
        times = []
        for _ in range(args.repeats):
            started = time.perf_counter()
            ds = load_voc(root, "train_aug", cache_dir=cache)
            times.append(time.perf_counter() - started)
        times.sort()
        print(
            f"train_aug index ({len(ds)} samples{'' if n is None else ', root written now'}): "
            f"first load {first:.2f} s; second load min {1000 * times[0]:.1f} ms, "
            f"median {1000 * times[len(times) // 2]:.1f} ms, max {1000 * times[-1]:.1f} ms"
        )


if __name__ == "__main__":
    main()

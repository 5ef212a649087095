"""Indexing MS COCO from instances annotations (``agen_hf.data.load_coco``) on a synthetic
instances file the size of train2014: the first load (JSON parse + mask rendering over
``--workers`` processes + Arrow index), the second (the cached memory map), and the rendering
rate of one process, beside the machine's fp32 GEMM GFLOP/s (lower where the machine is shared
with other work). The target: a first load of train2014 within 180 s on 2 cores
(``first_load_82k_extrapolated_s``, from a smaller ``--images`` too).

    python bench/coco.py [--images 82000] [--workers N] [--render_images 300] [--out coco.json]

The synthetic file: 640x480 images, 1 + Poisson(6.3) instances per image (7.3 on average, as
train2014's ~604k instances over 82k images), polygons of 8-24 vertices of random radius, ~1%
crowd regions as uncompressed RLE, the 80 official categories (sparse ids). The image files
are empty placeholders (indexing only lists the folder; it never opens an image).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from agen_hf.data import coco
from agen_hf.labels import IGNORE_INDEX

W, H = 640, 480
TRAIN2014_IMAGES = 82081  # with annotations, for first_load_82k_extrapolated_s (linear)
OFFICIAL_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def polygon(rng: np.random.Generator) -> list[list[float]]:
    n = int(rng.integers(8, 25))
    cx, cy = rng.uniform(0, W), rng.uniform(0, H)
    radius = rng.uniform(10, 150) * rng.uniform(0.6, 1.0, n)
    angle = np.sort(rng.uniform(0, 2 * np.pi, n))
    xs = np.clip(cx + radius * np.cos(angle), 0, W - 1)
    ys = np.clip(cy + radius * np.sin(angle), 0, H - 1)
    return [np.round(np.stack([xs, ys], 1).ravel(), 2).tolist()]


def crowd_rle(rng: np.random.Generator) -> dict:
    """Uncompressed (column-major) RLE of a random box, as COCO stores crowd regions."""
    x0, y0 = int(rng.integers(0, W - 100)), int(rng.integers(0, H - 100))
    w, h = int(rng.integers(20, 100)), int(rng.integers(20, 100))
    counts = [x0 * H + y0]
    for _ in range(w - 1):
        counts += [h, H - h]
    counts += [h, H * W - sum(counts) - h]
    return {"size": [H, W], "counts": counts}


def write_instances(root: Path, images: int, seed: int = 0) -> tuple[Path, int]:
    rng = np.random.default_rng(seed)
    split_dir = root / "train2014"
    split_dir.mkdir(parents=True)
    (root / "annotations").mkdir()
    imgs, anns = [], []
    for i in range(1, images + 1):
        name = f"COCO_train2014_{i:012d}.jpg"
        open(split_dir / name, "w").close()
        imgs.append({"id": i, "file_name": name, "width": W, "height": H})
        for _ in range(1 + rng.poisson(6.3)):
            crowd = rng.random() < 0.01
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "iscrowd": int(crowd),
                    "category_id": OFFICIAL_IDS[int(rng.integers(0, 80))],
                    "segmentation": crowd_rle(rng) if crowd else polygon(rng),
                    "area": 0.0,
                    "bbox": [0, 0, 1, 1],
                }
            )
    cats = [
        {"id": i, "name": n, "supercategory": ""}
        for i, n in zip(OFFICIAL_IDS, coco.COCO_CLASS_NAMES)
    ]
    path = root / "annotations" / "instances_train2014.json"
    with open(path, "w") as f:
        json.dump({"images": imgs, "annotations": anns, "categories": cats}, f)
    return path, len(anns)


def render_rate(ann_file: Path, out_dir: Path, images: int) -> tuple[float, float]:
    """Images/s of one process: masks only, and masks + PNG writing (``_render_chunk``)."""
    data = json.loads(ann_file.read_text())
    value = {
        c["id"]: k + 1 for k, c in enumerate(sorted(data["categories"], key=lambda c: c["id"]))
    }
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        if a["image_id"] <= images:
            by_image.setdefault(a["image_id"], []).append(
                (a["segmentation"], IGNORE_INDEX if a["iscrowd"] else value[a["category_id"]])
            )
    jobs = [(str(out_dir / f"{i}.png"), H, W, inst) for i, inst in sorted(by_image.items())]
    t0 = time.perf_counter()
    for _, h, w, inst in jobs:
        coco.render_mask(inst, h, w)
    masks_only = len(jobs) / (time.perf_counter() - t0)
    out_dir.mkdir()
    t0 = time.perf_counter()
    coco._render_chunk(jobs)
    return masks_only, len(jobs) / (time.perf_counter() - t0)


def gemm_gflops(n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.matmul(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--images", type=int, default=82000)
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--render_images",
        type=int,
        default=300,
        help="images for the single-process rendering rate",
    )
    p.add_argument("--out", default="bench_coco.json")
    args = p.parse_args()
    result = {
        "machine": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "date": time.strftime("%Y-%m-%d"),
        "images": args.images,
        "workers": args.workers,
        "gemm_fp32_2048_gflop_per_s": gemm_gflops(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        root, cache = Path(tmp) / "coco", Path(tmp) / "cache"
        t0 = time.perf_counter()
        ann_file, instances = write_instances(root, args.images)
        result.update(
            instances=instances,
            json_mb=ann_file.stat().st_size / 2**20,
            write_synthetic_s=time.perf_counter() - t0,
        )
        t0 = time.perf_counter()
        with open(ann_file, "rb") as f:
            json.load(f)
        result["json_parse_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        first = coco.load_coco(root, "train2014", cache_dir=cache, num_workers=args.workers)
        result["first_load_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = coco.load_coco(root, "train2014", cache_dir=cache, num_workers=args.workers)
        result["second_load_s"] = time.perf_counter() - t0
        assert len(first) == len(second) == args.images and second.cache_files
        t0 = time.perf_counter()
        labels_only = coco.load_coco(root, "train2014", cache_dir=cache, masks=False)
        result["first_load_labels_only_s"] = time.perf_counter() - t0
        assert labels_only.data.table.column("mask")[0].as_py() is None  # (placeholders)
        result["first_load_img_per_s"] = args.images / result["first_load_s"]
        result["first_load_82k_extrapolated_s"] = TRAIN2014_IMAGES / result["first_load_img_per_s"]
        masks_only, with_png = render_rate(
            ann_file, Path(tmp) / "rate", min(args.render_images, args.images)
        )
        result.update(
            render_1proc_masks_img_per_s=masks_only, render_1proc_masks_png_img_per_s=with_png
        )
    for k, v in result.items():
        print(f"{k}: {v:.2f}" if isinstance(v, float) else f"{k}: {v}")
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

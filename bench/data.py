"""Decode + augment throughput of one data-loading worker (images/s), on the real VOC sample
in ../shared/data/voc_sample (when present) and on the embedded synthetic data.

    python bench/data.py [--voc_root DIR] [--seconds 10] [--out data.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from agen_hf.data import load_voc, make_synthetic
from agen_hf.data.transforms import train_transform, with_transforms

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_sample"


def throughput(ds, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ds[n % len(ds)]
        n += 1
    return n / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--voc_root", default=str(SHARED))
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--out", default="bench_data.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # one worker = one core
    results = {
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
        "torch_threads": 1,
    }
    with tempfile.TemporaryDirectory() as cache:
        if Path(args.voc_root).is_dir():
            voc = load_voc(args.voc_root, "val", cache_dir=cache)
            results["voc_train_transform_321_img_per_s"] = throughput(
                with_transforms(voc, train_transform()), args.seconds
            )
        synthetic = make_synthetic(500, image_size=128, cache_dir=cache)
        results["synthetic128_train_transform_112_img_per_s"] = throughput(
            with_transforms(synthetic, train_transform(112, (112, 160))), args.seconds
        )
        results["synthetic128_paper_transform_321_img_per_s"] = throughput(
            with_transforms(synthetic, train_transform()), args.seconds
        )
        t0 = time.perf_counter()
        make_synthetic(1000, seed=7, image_size=128, cache_dir=cache)
        results["synthetic_make_1000_images_128_s"] = time.perf_counter() - t0
    for k, v in results.items():
        print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")
    Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()

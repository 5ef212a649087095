"""Mean IoU speed and equality on the 1,449 real VOC val masks
(../shared/data/voc_val_masks), against perturbed predictions: our streaming confusion
matrix vs the Hub metric's per-image histogram algorithm (written out as it is in
``evaluate``'s ``mean_iou``), timed in the same run.

    python bench/metric.py [--masks DIR] [--num_labels 81] [--repeats 5] [--out metric.json]

Each of ``--repeats`` rounds times the three in turn (the per-image algorithm, ours on uint8
maps, ours on int64 maps), so that a slow spell of a shared machine falls on all of them; the
figures are the medians of the rounds, the ratios those of the medians (each round's too).

``--num_labels 81`` (COCO's background + 80): the masks' classes are spread over 81 labels
(class c of the i-th mask becomes c + 20 * (i % 4)), so the same shapes carry 81 classes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from agen_hf.metrics import StreamingMeanIoU

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_metrics import hub_mean_iou  # noqa: E402  (the Hub algorithm, written out once)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "voc_val_masks"


def timed_streaming(
    preds: list[np.ndarray], refs: list[np.ndarray], num_labels: int
) -> tuple[dict, float]:
    """``StreamingMeanIoU`` over every pair, and the seconds it took (updates + compute)."""
    t0 = time.perf_counter()
    metric = StreamingMeanIoU(num_labels)
    for p_, r in zip(preds, refs):
        metric.update(p_, r)
    return metric.compute(), time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--masks", default=str(SHARED))
    p.add_argument("--num_labels", type=int, default=21, help="21 (VOC) up to 81 (COCO)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench_metric.json")
    args = p.parse_args()
    n = args.num_labels
    if not 21 <= n <= 81:
        p.error("--num_labels: 21..81")
    folder = Path(args.masks) / "SegmentationClassAug"
    ids = (Path(args.masks) / "val.txt").read_text().split()
    refs = [np.array(Image.open(folder / f"{i}.png")) for i in ids]
    spread = (n - 1) // 20  # class c of mask i -> c + 20 * (i % spread)
    refs = [
        np.where((r > 0) & (r < 255), r + 20 * (i % spread), r).astype(np.uint8)
        for i, r in enumerate(refs)
    ]
    rng = np.random.default_rng(0)
    preds = []
    for r in refs:  # perturbed ground truth: shifted, with random class noise
        p_ = np.roll(np.where(r == 255, 0, r), 7, axis=1).astype(np.uint8)  # as PNGs are
        noise = rng.random(r.shape) < 0.1
        p_[noise] = rng.integers(0, n, noise.sum())
        preds.append(p_)
    preds64 = [p_.astype(np.int64) for p_ in preds]  # as ``logits.argmax(1)`` gives them
    rounds = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        hub_iou = hub_mean_iou(preds, refs, n, 255)["per_category_iou"]
        t_hub = time.perf_counter() - t0
        ours, t_ours = timed_streaming(preds, refs, n)
        ours64, t_ours64 = timed_streaming(preds64, refs, n)
        rounds.append({"hub_s": t_hub, "uint8_s": t_ours, "int64_s": t_ours64})
        print(
            f"per-image {t_hub:.3f} s, ours uint8 {t_ours:.3f} s ({t_hub / t_ours:.1f}x), "
            f"int64 {t_ours64:.3f} s ({t_hub / t_ours64:.1f}x)",
            flush=True,
        )
    equal = bool(np.allclose(ours["per_category_iou"], hub_iou, rtol=1e-12, atol=0)) and bool(
        np.array_equal(ours64["per_category_iou"], ours["per_category_iou"], equal_nan=True)
    )
    median = {k: float(np.median([r[k] for r in rounds])) for k in rounds[0]}
    result = {
        "images": len(refs),
        "num_labels": n,
        "rounds": rounds,
        "hub_per_image_histogram_s": median["hub_s"],
        "streaming_s": median["uint8_s"],
        "speedup": median["hub_s"] / median["uint8_s"],
        "streaming_int64_predictions_s": median["int64_s"],
        "speedup_int64_predictions": median["hub_s"] / median["int64_s"],
        "speedup_per_round": [r["hub_s"] / r["uint8_s"] for r in rounds],
        "speedup_int64_per_round": [r["hub_s"] / r["int64_s"] for r in rounds],
        "mean_iou": float(ours["mean_iou"]),
        "identical_per_category_iou": equal,
        "date": time.strftime("%Y-%m-%d"),
    }
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""Dense-CRF costs: the boundary loss's CRF (eq. 14) at the logits' resolution for a paper
batch, with all 21 classes vs background + the image's classes, pydensecrf vs the pure-torch
backend, serial vs a process pool; and full-resolution post-processing of a 500 x 375 image.

    python bench/crf.py [--batch 15] [--size 321] [--processes 2] [--num_labels 81]
        [--step_json bench_train_step.json]

``--num_labels 81``: COCO's label count (background + 80); an image still shows 2 classes.

With ``--step_json`` (written by bench/train_step.py with the same --batch and --size) the
boundary CRF is also given as a fraction of the paper-size training step.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from agen_hf.crf import CrfParams, CrfPool, crf_refine


def scene(h: int, w: int, classes: int, present: list[int], seed: int):
    """A blocky image with one region per present class and softmax scores that roughly
    (not exactly) follow it."""
    rng = np.random.default_rng(seed)
    label = np.zeros((h, w), np.int64)
    for k, c in enumerate(present[1:]):
        y0, x0 = rng.integers(0, h // 2), rng.integers(0, w // 2)
        label[y0 : y0 + h // 2, x0 : x0 + w // 2] = c
    colours = rng.integers(0, 256, (classes, 3))
    image = np.clip(colours[label] + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    logits = rng.normal(0, 1, (classes, h, w)) + 3 * np.eye(classes)[label].transpose(2, 0, 1)
    probs = torch.softmax(torch.from_numpy(logits).float(), dim=0)
    return image, probs


def best_of(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def boundary_crf(args) -> dict:
    side = -(-args.size // 8)
    factor = args.size / side
    params = CrfParams().scaled(factor)
    k = args.num_labels
    half = (k - 1) // 2  # two classes an image, one from each half of the label set
    classes = [[0, 1 + i % half, 1 + half + i % half] for i in range(args.batch)]
    cases = [scene(side, side, k, c, i) for i, c in enumerate(classes)]
    images = torch.stack([torch.from_numpy(im).permute(2, 0, 1).float() for im, _ in cases])
    probs = torch.stack([p for _, p in cases])
    present = torch.zeros(args.batch, k, dtype=torch.bool)
    present[:, 0] = True
    for i, c in enumerate(classes):
        present[i, c] = True
    everything = torch.ones_like(present)
    out = {"logits_side": side, "batch": args.batch, "num_labels": k}
    for backend in ("pydensecrf", "torch"):
        for name, mask in (("all_classes", everything), ("present_classes", present)):
            out[f"{backend}_{name}_serial_s"] = best_of(
                lambda: crf_refine(images, probs, mask, params, backend), args.repeats
            )
    # the training step's pooled path (--boundary_crf_processes): crf_refine over batch_pool
    crf_refine(images[:1], probs[:1], present[:1], params, "pydensecrf", args.processes)  # spawn
    out["pydensecrf_present_classes_batch_pool_s"] = best_of(
        lambda: crf_refine(images, probs, present, params, "pydensecrf", args.processes),
        args.repeats,
    )
    # the same present-class work over a pool: one task per image
    with CrfPool(params, args.processes) as pool:
        rgb = [im for im, _ in cases]
        classes = [np.array(c) for c in classes]

        def pooled():
            for i in range(args.batch):
                pool.submit(rgb[i], probs[i, classes[i]], classes[i])
            pool.finish()

        out["pydensecrf_present_classes_pool_s"] = best_of(pooled, args.repeats)
    out["pool_processes"] = args.processes
    return out


def post_processing(args) -> dict:
    present = np.array([0, 8, 15])  # what the prediction contains
    image, probs = scene(375, 500, args.num_labels, present.tolist(), 0)
    out = {"image": "500x375", "num_labels": args.num_labels}
    with CrfPool(CrfParams(), 0) as serial:
        out["all_classes_s"] = best_of(
            lambda: serial.submit(image, probs, np.arange(args.num_labels)), args.repeats
        )
        out["present_classes_s"] = best_of(
            lambda: serial.submit(image, probs[torch.as_tensor(present)], present), args.repeats
        )
    n = args.images
    with CrfPool(CrfParams(), args.processes) as pool:

        def run():
            for _ in range(n):
                pool.submit(image, probs[torch.as_tensor(present)], present)
            pool.finish()

        out[f"pool_{n}_images_s"] = best_of(run, 1)
    out["serial_images_per_s"] = 1 / out["present_classes_s"]
    out["pool_images_per_s"] = n / out[f"pool_{n}_images_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=15)
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--images", type=int, default=8, help="images for the pooled post-processing")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--num_labels", type=int, default=21, help="21 (VOC) or 81 (COCO)")
    p.add_argument("--step_json", help="bench/train_step.py output for the step-time fraction")
    p.add_argument("--out", default="bench_crf.json")
    args = p.parse_args()
    torch.set_num_threads(1)  # the CRF itself is single-threaded; compare like with like
    result = {
        "boundary_loss_crf": boundary_crf(args),
        "post_processing": post_processing(args),
        "date": time.strftime("%Y-%m-%d"),
    }
    if args.step_json and Path(args.step_json).is_file():
        step = json.loads(Path(args.step_json).read_text())
        if step["batch"] == args.batch and step["size"] == args.size:
            full = step["paper_fp32"]["full"]["step_s"]
            crf = result["boundary_loss_crf"]["pydensecrf_present_classes_serial_s"]
            result["crf_fraction_of_paper_step"] = crf / (full + crf)
            result["paper_step_device"] = step["device"]
    print(json.dumps(result, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

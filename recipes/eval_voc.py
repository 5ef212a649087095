#!/usr/bin/env python
"""Score a trained AGEN on PASCAL VOC 2012 (paper Table 4) or any dataset with masks: mean
IoU over background + the dataset's classes, optionally with multi-scale + flip and dense-CRF
post-processing.

    accelerate launch recipes/eval_voc.py --model runs/agen --voc_root /data/VOCdevkit/VOC2012 \
        --scales 0.5 1 1.5 2 --flip --crf
    accelerate launch recipes/eval_voc.py --model runs/agen-coco --coco_root /data/coco
    python recipes/eval_voc.py --model runs/mine --dataset folder --validation_dir checked/

Each process scores its own shard of the split and the confusion matrices are summed, so any
number of processes (GPUs, nodes, or CPU processes under torchrun) gives the same numbers.
Prints the table and writes every figure to ``--output`` (JSON).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import datasets
import torch

from agen_hf import AgenImageProcessor, segmentation_probabilities
from agen_hf.atomic import write_text_atomic
from agen_hf.auto import load_segmentation_model
from agen_hf.data import DataError, class_names
from agen_hf.data.samples import skipped_when_loaded
from agen_hf.data.schema import same_classes_or_raise
from agen_hf.data.sources import (
    add_data_arguments,
    add_synthetic_arguments,
    load_split,
    resolve_source,
)
from agen_hf.data.transforms import eval_transform, with_transforms
from agen_hf.engine import evaluate_segmentation, make_accelerator, shard_loader
from agen_hf.engine.arguments import HelpFormatter, configure_logging
from agen_hf.engine.distributed import main_process_first, sum_over_processes
from agen_hf.engine.exits import end_run, skipped_problems
from agen_hf.engine.inference_arguments import (
    add_inference_arguments,
    add_model_argument,
    crf_params,
    crf_pool,
    crf_problems,
    workers_replaced,
)
from agen_hf.metrics.report import iou_table

logger = logging.getLogger("eval_voc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_argument(p)
    g = p.add_argument_group("data")
    add_data_arguments(g, synthetic=True)
    add_synthetic_arguments(g, seed=True)
    p.add_argument("--split", default=None, help="the split to score (default: --eval_split's)")
    add_inference_arguments(p)
    p.add_argument("--skip_bad_samples", action="store_true")
    p.add_argument(
        "--output_dir",
        "--out",
        dest="output_dir",
        help="folder of eval_<split>.json (default: the model's folder when it is "
        "one, else the working directory)",
    )
    p.add_argument("--output", help="the JSON file itself (instead of --output_dir)")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.train_dir and not args.validation_dir:
        parser.error("--train_dir: give the folder to score as --validation_dir")
    resolve_source(args, parser)
    args.split = args.split or args.eval_split
    if args.output is None:
        model = Path(args.model_name_or_path)
        folder = Path(args.output_dir or (model if model.is_dir() else "."))
        args.output = str(folder / f"eval_{args.split}.json")
    return args


def scored_dataset(args: argparse.Namespace, model_classes: list[str]) -> datasets.Dataset:
    """The split to score, in the model's classes; an error naming the images without a
    ground-truth mask, or both class lists when the model knows other classes."""
    try:
        dataset = load_split(
            args, args.split, role="eval", class_names_=model_classes, require_foreground=False
        )
    except DataError as e:
        raise SystemExit(
            f"{e}\n(eval_voc scores against ground-truth masks: every image of "
            f"the {args.split!r} split needs one)"
        ) from None
    try:
        same_classes_or_raise(
            model_classes,
            class_names(dataset),
            args.model_name_or_path,
            f"the {args.split} split",
            "score it on data of its classes",
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None
    masks = dataset.cast_column("mask", datasets.Image(decode=False))["mask"]
    unmasked = [sid for sid, m in zip(dataset["id"], masks) if m is None]
    if len(unmasked) == len(dataset):
        raise SystemExit(
            f"split {args.split!r}: no masks, so nothing to score (its "
            f"{len(dataset)} images have image-level labels only); segment them "
            "with recipes/predict.py"
        )
    if unmasked:
        raise SystemExit(
            f"split {args.split!r}: {len(unmasked)} of {len(dataset)} images have no "
            f"ground-truth mask to score against (e.g. {', '.join(unmasked[:5])}); segment "
            "them with recipes/predict.py (--voc_layout for the VOC test server)"
        )
    return dataset


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    accelerator = make_accelerator(
        args.cpu, mixed_precision=args.mixed_precision, ddp_timeout=args.ddp_timeout
    )
    configure_logging(accelerator)
    model = load_segmentation_model(args.model_name_or_path).to(accelerator.device).eval()
    config = model.config
    processor = AgenImageProcessor.from_pretrained(args.model_name_or_path, max_size=None)
    with main_process_first(accelerator, "the split indexed by the main process first (its cache)"):
        dataset = scored_dataset(args, config.label_names[1:])
    loader = shard_loader(
        with_transforms(
            dataset,
            eval_transform(processor.image_mean, processor.image_std),
            args.skip_bad_samples,
        ),
        accelerator,
        batch_size=1,
        num_workers=args.num_workers,
    )

    def predict(pixel_values: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():  # log-probabilities: their softmax is the average
            probs = segmentation_probabilities(
                model, pixel_values, args.scales, args.flip, processor.size_divisor
            )
        return probs.clamp_min(1e-12).log()

    started = time.time()
    with crf_pool(args) as crf:
        metrics = evaluate_segmentation(
            accelerator,
            predict,
            loader,
            config.num_labels,
            config.ignore_index,
            crf=crf,
            unnormalize=processor.unnormalize,
        )
        replaced = sum_over_processes(
            accelerator,
            torch.tensor([workers_replaced(crf)]),
            "the count of CRF workers replaced",
        )
    seconds = time.time() - started
    names = config.label_names
    result = {
        "model": args.model_name_or_path,
        "split": args.split,
        "num_images": len(dataset),
        "scales": args.scales,
        "flip": args.flip,
        "crf": args.crf,
        "crf_params": dataclasses.asdict(crf_params(args)) if args.crf else None,
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "seconds": seconds,
        "images_per_second": len(dataset) / seconds,
        "mean_iou": float(metrics["mean_iou"]),
        "mean_accuracy": float(metrics["mean_accuracy"]),
        "overall_accuracy": float(metrics["overall_accuracy"]),
        "per_category_iou": {n: float(v) for n, v in zip(names, metrics["per_category_iou"])},
        "per_category_accuracy": {
            n: float(v) for n, v in zip(names, metrics["per_category_accuracy"])
        },
        "skipped": skipped_when_loaded(dataset) + metrics["skipped"],
        "skipped_samples": metrics["skipped_samples"],
    }
    if accelerator.is_main_process:
        settings = (
            f"scales {args.scales}"
            + (", flip" if args.flip else "")
            + (", CRF" if args.crf else "")
        )
        print(f"{args.split}: {len(dataset)} images, {settings}, {seconds:.1f} s\n")
        print(iou_table(metrics["per_category_iou"], metrics["mean_iou"], names))
        output = Path(args.output)
        output.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(output, json.dumps(result, indent=2, allow_nan=True) + "\n")
        print(f"\nwritten to {output}")
    end_run(
        accelerator,
        crf_problems(int(replaced.item()))
        + skipped_problems(
            result["skipped"],
            "bad images",
            "and not scored",
            f"{args.output} and the warnings name them",
        ),
    )
    return result


if __name__ == "__main__":
    main()

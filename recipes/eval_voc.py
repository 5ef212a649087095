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

import dataclasses
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import datasets
import torch

from agen_hf import AgenImageProcessor, segmentation_probabilities
from agen_hf.arguments import ArgumentParser, flag
from agen_hf.atomic import write_text_atomic
from agen_hf.auto import load_segmentation_model
from agen_hf.data import DataError, class_names
from agen_hf.data.decoding import skipped_when_loaded
from agen_hf.data.sources import SyntheticDataArguments, load_split
from agen_hf.data.transforms import eval_transform, with_transforms
from agen_hf.engine import cpus_per_process, evaluate_segmentation, make_accelerator, shard_loader
from agen_hf.engine.arguments import (
    CrfArguments,
    DeviceArguments,
    ModelArguments,
    TestTimeAugmentation,
)
from agen_hf.engine.distributed import main_process_first, sum_over_processes
from agen_hf.engine.exits import crf_problems, end_run, skipped_problems
from agen_hf.engine.logs import configure_logging
from agen_hf.labels import same_classes_or_raise
from agen_hf.metrics.report import iou_table

logger = logging.getLogger("eval_voc")


@dataclass
class EvalArguments:
    """What to score and where the figures go."""

    split: str | None = flag(None, "the split to score (default: --eval_split's)")
    skip_bad_samples: bool = flag(False)
    output_dir: str | None = flag(
        None,
        "folder of eval_<split>.json (default: the model's folder when it is one, else the "
        "working directory)",
        aliases=["--out"],
    )
    output: str | None = flag(None, "the JSON file itself (instead of --output_dir)")
    seed: int = flag(
        42, "the training run's --seed: the synthetic splits are drawn from it", group="data"
    )


class Arguments(NamedTuple):
    model: ModelArguments
    data: SyntheticDataArguments
    eval: EvalArguments
    augmentation: TestTimeAugmentation
    device: DeviceArguments
    crf: CrfArguments


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        ModelArguments,
        SyntheticDataArguments,
        EvalArguments,
        TestTimeAugmentation,
        DeviceArguments,
        CrfArguments,
        description=__doc__.split("\n\n")[0],
    )


def parse_args(argv: list[str] | None = None) -> Arguments:
    """The flags, with what the recipe fills in: the source and its splits, the split to score
    (``--eval_split``'s by default) and the JSON file (``eval_<split>.json`` in the model's
    folder, or ``--output_dir``)."""
    parser = build_parser()
    args = Arguments(*parser.parse(argv))
    if args.data.train_dir and not args.data.validation_dir:
        parser.error("--train_dir: give the folder to score as --validation_dir")
    try:
        data = args.data.resolved()
    except ValueError as e:
        parser.error(str(e))
    split = args.eval.split or data.eval_split
    output = args.eval.output
    if output is None:
        model = Path(args.model.model_name_or_path)
        folder = Path(args.eval.output_dir or (model if model.is_dir() else "."))
        output = str(folder / f"eval_{split}.json")
    return args._replace(data=data, eval=dataclasses.replace(args.eval, split=split, output=output))


def scored_dataset(args: Arguments, model_classes: list[str]) -> datasets.Dataset:
    """The split to score, in the model's classes; an error naming the images without a
    ground-truth mask, or both class lists when the model knows other classes."""
    split, model = args.eval.split, args.model.model_name_or_path
    try:
        dataset = load_split(
            args.data,
            split,
            role="eval",
            class_names_=model_classes,
            require_foreground=False,
            skip_bad_samples=args.eval.skip_bad_samples,
            seed=args.eval.seed,
        )
    except DataError as e:
        raise SystemExit(
            f"{e}\n(eval_voc scores against ground-truth masks: every image of "
            f"the {split!r} split needs one)"
        ) from None
    try:
        same_classes_or_raise(
            model_classes,
            class_names(dataset),
            model,
            f"the {split} split",
            "score it on data of its classes",
        )
    except ValueError as e:
        raise SystemExit(str(e)) from None
    masks = dataset.cast_column("mask", datasets.Image(decode=False))["mask"]
    unmasked = [sid for sid, m in zip(dataset["id"], masks) if m is None]
    if len(unmasked) == len(dataset):
        raise SystemExit(
            f"split {split!r}: no masks, so nothing to score (its "
            f"{len(dataset)} images have image-level labels only); segment them "
            "with recipes/predict.py"
        )
    if unmasked:
        raise SystemExit(
            f"split {split!r}: {len(unmasked)} of {len(dataset)} images have no "
            f"ground-truth mask to score against (e.g. {', '.join(unmasked[:5])}); segment "
            "them with recipes/predict.py (--voc_layout for the VOC test server)"
        )
    return dataset


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    model_name, split, tta, device = (
        args.model.model_name_or_path,
        args.eval.split,
        args.augmentation,
        args.device,
    )
    configure_logging()
    accelerator = make_accelerator(
        device.cpu, mixed_precision=device.mixed_precision, ddp_timeout=device.ddp_timeout
    )
    model = load_segmentation_model(model_name).to(accelerator.device).eval()
    config = model.config
    processor = AgenImageProcessor.from_pretrained(model_name, max_size=None)
    with main_process_first(accelerator, "the split indexed by the main process first"):
        dataset = scored_dataset(args, config.label_names[1:])
    loader = shard_loader(
        with_transforms(
            dataset,
            eval_transform(processor.image_mean, processor.image_std),
            args.eval.skip_bad_samples,
        ),
        accelerator,
        batch_size=1,
        num_workers=device.num_workers,
    )

    def predict(pixel_values: torch.Tensor) -> torch.Tensor:
        with accelerator.autocast():  # log-probabilities: their softmax is the average
            probs = segmentation_probabilities(
                model, pixel_values, tta.scales, tta.flip, processor.size_divisor
            )
        return probs.clamp_min(1e-12).log()

    started = time.time()
    with args.crf.crf_pool(cpus_per_process()) as crf:
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
            torch.tensor([crf.workers_replaced if crf else 0]),
            "the count of CRF workers replaced",
        )
    seconds = time.time() - started
    names = config.label_names
    result = {
        "model": model_name,
        "split": split,
        "num_images": len(dataset),
        "scales": tta.scales,
        "flip": tta.flip,
        "crf": args.crf.crf,
        "crf_params": dataclasses.asdict(args.crf.crf_params()) if args.crf.crf else None,
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
            f"scales {tta.scales}"
            + (", flip" if tta.flip else "")
            + (", CRF" if args.crf.crf else "")
        )
        print(f"{split}: {len(dataset)} images, {settings}, {seconds:.1f} s\n")
        print(iou_table(metrics["per_category_iou"], metrics["mean_iou"], names))
        output = Path(args.eval.output)
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
            f"{args.eval.output} and the warnings name them",
        ),
    )
    return result


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Step two of two-step AGEN (paper Table 5): train DeepLab on AGEN's pseudo labels.

    accelerate launch recipes/make_pseudo_labels.py --model runs/agen --voc_root VOC2012 \
        --crf --out pseudo
    accelerate launch recipes/train_deeplab.py --pseudo_root pseudo --voc_root VOC2012 \
        --backbone resnet101 --backbone_weights resnet101-63fe2227.pth --output_dir runs/agen-resnet
    accelerate launch recipes/train_deeplab.py --pseudo_root pseudo --voc_root VOC2012 \
        --backbone vgg16 --head aspp --backbone_weights vgg16-397923af.pth \
        --output_dir runs/agen-vgg

The pseudo labels name their classes (``OUT/pseudo_labels.arrow``, written for every source
but VOC) and the model learns those; validation reads the ground truth of any source
(``--voc_root``, ``--coco_root``, ``--validation_dir``, ``--dataset_name``) in them.

The same loop as train_voc.py (``agen_hf.engine.loop``): the schedule flags, checkpoints and
exact resume, validation on ``--voc_root``'s ground truth, tracking, the final save and Hub
push. The training targets are the pseudo masks (an image whose pseudo mask is all
background is a valid target); image-level labels are not used.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import datasets
from accelerate.utils import set_seed

from agen_hf.data import DataError, class_names, id2label_for, load_voc
from agen_hf.data.sources import (
    add_data_arguments,
    card_dataset,
    load_split,
    resolve_source,
    scored,
)
from agen_hf.deeplab import BACKBONES, VGG_HEADS, DeepLabConfig, DeepLabModel
from agen_hf.engine.accelerator import prepare_training
from agen_hf.engine.arguments import (
    HelpFormatter,
    add_training_arguments,
    configure_logging,
    parse_with_config,
    training_accelerator,
)
from agen_hf.engine.distributed import main_process_first
from agen_hf.engine.loaders import loaders_from_args
from agen_hf.engine.loop import train
from agen_hf.engine.redaction import command_line
from agen_hf.engine.run import begin, finish, model_card
from agen_hf.hub import for_classes
from agen_hf.weights import load_resnet101, load_vgg16

logger = logging.getLogger("train_deeplab")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of flag values (dest names as keys)")
    g = p.add_argument_group("data")
    g.add_argument(
        "--pseudo_root",
        required=False,
        help="make_pseudo_labels.py's output (a VOC root), or its pseudo_labels.arrow",
    )
    add_data_arguments(g)  # the validation data, with ground truth
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, default="resnet101")
    g.add_argument(
        "--head",
        choices=VGG_HEADS,
        default="aspp",
        help="VGG16 head: largefov or aspp (DeepLab-v2 ASPP-L)",
    )
    g.add_argument("--model_config", help="a DeepLabConfig JSON (overrides --backbone/--head)")
    g.add_argument(
        "--model_name_or_path", help="fine-tune a saved DeepLabModel: a model folder or a Hub id"
    )
    g.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="with --model_name_or_path: fresh class layers for other classes",
    )
    g.add_argument(
        "--backbone_weights",
        help="ImageNet weights by path: torchvision resnet101 or vgg16 state dict",
    )
    add_training_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.pseudo_root:
        parser.error(
            "give --pseudo_root (make_pseudo_labels.py's output) and the validation "
            "data (--voc_root, --coco_root, --train_dir/--validation_dir or "
            "--dataset_name)"
        )
    resolve_source(args, parser)
    args.crop_size = args.crop_size or 321
    args.scale_range = args.scale_range or [321, 481]
    return args


def model_config(args: argparse.Namespace, id2label: dict[int, str]) -> DeepLabConfig:
    if args.model_config:
        try:
            config = DeepLabConfig.from_json_file(args.model_config)
        except (OSError, ValueError, TypeError) as e:
            raise SystemExit(f"--model_config {args.model_config}: {e}") from None
    else:
        config = DeepLabConfig(backbone=args.backbone, head=args.head)
    return config.with_classes(id2label)


def pseudo_dataset(args: argparse.Namespace) -> datasets.Dataset:
    """The pseudo labels, with their classes: the table when there is one, else the VOC
    root (VOC's classes)."""
    path = Path(args.pseudo_root)
    if path.is_dir() and (path / "pseudo_labels.arrow").is_file():
        path = path / "pseudo_labels.arrow"
    if path.suffix == ".arrow":
        return datasets.Dataset.from_file(str(path))
    return load_voc(
        path, args.train_split, skip_bad_samples=args.skip_bad_samples, require_foreground=False
    )


def build_model(args: argparse.Namespace, id2label: dict[int, str]) -> DeepLabModel:
    """A fresh DeepLab for the pseudo labels' classes (with ImageNet weights given by path),
    or ``--model_name_or_path`` (which must know them, see :func:`agen_hf.hub.for_classes`)."""
    model = (
        for_classes(
            DeepLabModel.from_pretrained(args.model_name_or_path),
            id2label,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            model_name=args.model_name_or_path,
            data_name="the pseudo labels",
        )
        if args.model_name_or_path
        else DeepLabModel(model_config(args, id2label))
    )
    if args.backbone_weights:
        load = load_resnet101 if model.config.backbone == "resnet101" else load_vgg16
        logger.info("%s", load(model, args.backbone_weights))
    return model


def compute_loss(model, batch, process_group, step):
    """Pixel-wise cross-entropy against the pseudo masks (the model's own loss)."""
    out = model(batch["pixel_values"], masks=batch["mask"], process_group=process_group)
    return out.loss, out.loss_terms


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    accelerator = training_accelerator(args)
    configure_logging(accelerator)
    set_seed(args.seed, deterministic=args.deterministic)

    try:
        with main_process_first(
            accelerator, "the data indexed by the main process first (its caches)"
        ):
            train_ds = pseudo_dataset(args)
            names = class_names(train_ds)
            val_ds = load_split(
                args, args.eval_split, role="eval", class_names_=names, require_foreground=False
            )
    except (DataError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if val_ds is not None and class_names(val_ds) != names:
        raise SystemExit(
            f"the pseudo labels name the classes {list(names)}, the "
            f"{args.eval_split} split {list(class_names(val_ds))}"
        )
    val_ds = scored(val_ds, f"the {args.eval_split} split")
    model = build_model(args, id2label_for(names))
    config = model.config
    train_dl, val_dl = loaders_from_args(
        accelerator, args, train_ds, val_ds, config.image_mean, config.image_std
    )
    model, optimizer, base_lrs, train_dl = prepare_training(accelerator, args, model, train_dl)
    options, state = begin(accelerator, args, model, train_dl, train_ds, project="agen-deeplab")

    started = time.time()
    state = train(
        accelerator,
        model,
        optimizer,
        base_lrs,
        train_dl,
        compute_loss,
        options,
        state,
        val_loader=val_dl,
    )
    return finish(
        accelerator,
        args,
        model,
        val_dl,
        state,
        started,
        lambda metrics: model_card(
            metrics,
            config.label_names,
            command_line("recipes/train_deeplab.py", argv, num_processes=accelerator.num_processes),
            f"Two-step AGEN: DeepLab ({config.backbone}) trained on AGEN's pseudo labels.",
            card_dataset(args),
        ),
        loaded=(train_ds, val_ds),
        supervision="pseudo labels",
    )


if __name__ == "__main__":
    main()

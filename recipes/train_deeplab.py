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

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, NamedTuple

import datasets
from accelerate.utils import set_seed

from agen_hf.arguments import ArgumentParser, flag, flag_values, json_object, run_defining
from agen_hf.data import DataError, class_names, load_voc
from agen_hf.data.sources import DataArguments, card_dataset, load_split, with_masks
from agen_hf.deeplab import VGG_HEADS, DeepLabConfig, DeepLabModel
from agen_hf.engine.accelerator import prepare_training, training_accelerator
from agen_hf.engine.arguments import TrainingArguments
from agen_hf.engine.distributed import main_process_first
from agen_hf.engine.loaders import training_loaders
from agen_hf.engine.logs import configure_logging
from agen_hf.engine.loop import train
from agen_hf.engine.redaction import command_line
from agen_hf.engine.run import TrainingRun, model_card
from agen_hf.engine.supervision import Supervision
from agen_hf.hub import model_for_classes
from agen_hf.labels import id2label_for
from agen_hf.weights import load_deeplab_backbone

logger = logging.getLogger("train_deeplab")


@dataclass
class PseudoLabelData(DataArguments):
    """The pseudo labels to train on, and the validation data with ground truth (any source)."""

    pseudo_root: str | None = flag(
        None, "make_pseudo_labels.py's output (a VOC root), or its pseudo_labels.arrow"
    )


@dataclass
class DeepLabArguments:
    """The DeepLab a run trains: fresh (a backbone and head, or a config file) or saved."""

    group: ClassVar[str] = "model"
    backbone: str = flag(
        "resnet101",
        "resnet101 or vgg16 (Table 5's DeepLab-v3 and DeepLab-LargeFOV/ASPP-L), or any "
        "registered backbone with the LargeFOV/ASPP-L head (python -m agen_hf.backbones)",
    )
    backbone_options: dict | None = flag(
        None, "the backbone's options as JSON, e.g. '{\"layers\": [3, 4, 6, 3]}'", type=json_object
    )
    head: str = flag("aspp", "VGG16 head: largefov or aspp (DeepLab-v2 ASPP-L)", choices=VGG_HEADS)
    model_config: str | None = flag(None, "a DeepLabConfig JSON (overrides --backbone/--head)")
    model_name_or_path: str | None = flag(
        None, "fine-tune a saved DeepLabModel: a model folder or a Hub id"
    )
    ignore_mismatched_sizes: bool = flag(
        False, "with --model_name_or_path: fresh class layers for other classes"
    )
    backbone_weights: str | None = flag(
        None, "ImageNet weights by path: torchvision resnet101 or vgg16 state dict"
    )


class Arguments(NamedTuple):
    data: PseudoLabelData
    model: DeepLabArguments
    training: TrainingArguments


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        PseudoLabelData,
        DeepLabArguments,
        TrainingArguments,
        config_file=True,
        description=__doc__.split("\n\n")[0],
    )


def parse_args(argv: list[str] | None = None) -> Arguments:
    """The flags, with what the recipe fills in: the validation source and its splits, and the
    paper's crop (321) and rescale range (321-481) when none is given."""
    parser = build_parser()
    data, model, training = parser.parse(argv)
    if not data.pseudo_root:
        parser.error(
            "give --pseudo_root (make_pseudo_labels.py's output) and the validation "
            "data (--voc_root, --coco_root, --train_dir/--validation_dir or "
            "--dataset_name)"
        )
    try:
        data = data.resolved()
    except ValueError as e:
        parser.error(str(e))
    training = dataclasses.replace(
        training,
        crop_size=training.crop_size or 321,
        scale_range=training.scale_range or [321, 481],
    )
    return Arguments(data, model, training)


def model_config(args: DeepLabArguments, id2label: dict[int, str]) -> DeepLabConfig:
    if args.model_config:
        try:
            config = DeepLabConfig.from_json_file(args.model_config)
        except (OSError, ValueError, TypeError) as e:
            raise SystemExit(f"--model_config {args.model_config}: {e}") from None
    else:
        try:
            config = DeepLabConfig(
                backbone=args.backbone,
                head=args.head,
                backbone_options=args.backbone_options or {},
            )
        except ValueError as e:
            raise SystemExit(f"--backbone {args.backbone}: {e}") from None
    return config.with_classes(id2label)


def pseudo_dataset(data: PseudoLabelData, skip_bad_samples: bool) -> datasets.Dataset:
    """The pseudo labels, with their classes: the table when there is one, else the VOC
    root (VOC's classes)."""
    path = Path(data.pseudo_root)
    if path.is_dir() and (path / "pseudo_labels.arrow").is_file():
        path = path / "pseudo_labels.arrow"
    if path.suffix == ".arrow":
        return datasets.Dataset.from_file(str(path))
    return load_voc(
        path, data.train_split, skip_bad_samples=skip_bad_samples, require_foreground=False
    )


def build_model(args: DeepLabArguments, id2label: dict[int, str]) -> DeepLabModel:
    """A fresh DeepLab for the pseudo labels' classes (with ImageNet weights given by path),
    or ``--model_name_or_path`` (which must know them, see
    :func:`agen_hf.hub.model_for_classes`)."""
    model = (
        model_for_classes(
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
        logger.info("%s", load_deeplab_backbone(model, args.backbone_weights))
    return model


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    data, deeplab, training = parse_args(argv)
    if training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    configure_logging()
    accelerator = training_accelerator(training)
    set_seed(training.seed, deterministic=training.deterministic)

    try:
        with main_process_first(accelerator, "the data indexed by the main process first"):
            train_ds = pseudo_dataset(data, training.skip_bad_samples)
            names = class_names(train_ds)
            val_ds = load_split(
                data,
                data.eval_split,
                role="eval",
                class_names_=names,
                require_foreground=False,
                skip_bad_samples=training.skip_bad_samples,
            )
    except (DataError, ValueError) as e:
        raise SystemExit(str(e)) from None
    if val_ds is not None and class_names(val_ds) != names:
        raise SystemExit(
            f"the pseudo labels name the classes {list(names)}, the "
            f"{data.eval_split} split {list(class_names(val_ds))}"
        )
    val_ds = with_masks(val_ds, f"the {data.eval_split} split")
    model = build_model(deeplab, id2label_for(names))
    config = model.config
    train_dl, val_dl = training_loaders(
        accelerator, training, train_ds, val_ds, config.image_mean, config.image_std
    )
    model, optimizer, base_lrs, train_dl = prepare_training(accelerator, model, train_dl, training)
    run = TrainingRun(
        accelerator,
        training,
        flag_values(data, deeplab, training),
        run_defining(data, deeplab, training),
        project="agen-deeplab",
    )
    options, state = run.start(model, train_dl, train_ds)
    # pixel-wise cross-entropy against the pseudo masks (the model's own loss)
    state = train(
        accelerator,
        model,
        optimizer,
        base_lrs,
        train_dl,
        Supervision(masks=True),
        options,
        state,
        val_loader=val_dl,
    )
    return run.finish(
        model,
        val_dl,
        state,
        lambda metrics: model_card(
            metrics,
            config.label_names,
            command_line("recipes/train_deeplab.py", argv, num_processes=accelerator.num_processes),
            f"Two-step AGEN: DeepLab ({config.backbone}) trained on AGEN's pseudo labels.",
            card_dataset(data),
        ),
        loaded=(train_ds, val_ds),
        supervision="pseudo labels",
    )


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Train AGEN end-to-end from image-level labels (section IV.1 of the paper).

    accelerate launch recipes/train_voc.py --voc_root /data/VOCdevkit/VOC2012
    accelerate launch recipes/train_voc.py --config recipes/configs/coco.yaml --coco_root /data/coco
    accelerate launch recipes/train_voc.py --train_dir photos/ --validation_dir checked/
    accelerate launch --config_file launch/cpu.yaml recipes/train_voc.py --dataset synthetic \
        --model_config tiny

The model learns the training dataset's classes (its ``labels`` feature): a fresh model takes
``num_labels`` and ``id2label`` from it; a saved one (``--model_name_or_path``) must know the
same classes unless ``--ignore_mismatched_sizes`` re-initialises its class layers.

Defaults are the paper's schedule: SGD (momentum 0.9, weight decay 5e-4), lr 1e-3 for the
ImageNet-initialised backbone and 1e-2 for the AGMs and new heads, divided by 10 every 10
epochs, 35 epochs, batch 15, crops of 321. Every option is a flag and can come from a YAML or
JSON file (``--config run.yaml``; flags on the command line win). The same script runs on one
CPU, one GPU, many GPUs and many nodes: Accelerate does the device work.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import time

from accelerate.utils import set_seed

from agen_hf import AgenConfig, AgenModel
from agen_hf.configuration_agen import TABLE1_PRESETS
from agen_hf.data import class_names, id2label_for
from agen_hf.data.sources import (
    add_data_arguments,
    add_synthetic_arguments,
    card_dataset,
    load_split,
    resolve_source,
    scored,
)
from agen_hf.engine.accelerator import base_model, prepare_training
from agen_hf.engine.arguments import (
    HelpFormatter,
    add_training_arguments,
    configure_logging,
    non_negative,
    parse_with_config,
    training_accelerator,
)
from agen_hf.engine.distributed import main_process_first
from agen_hf.engine.loaders import loaders_from_args
from agen_hf.engine.loop import train
from agen_hf.engine.redaction import command_line
from agen_hf.engine.run import begin, finish, model_card
from agen_hf.hub import for_classes
from agen_hf.visualization import write_cam_figure
from agen_hf.weights import load_resnet38, load_vgg16

logger = logging.getLogger("train_voc")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of flag values (dest names as keys)")
    g = p.add_argument_group("data")
    add_data_arguments(g, synthetic=True)
    add_synthetic_arguments(g)
    g = p.add_argument_group("model")
    g.add_argument(
        "--model_config", default="paper", help="a fresh model: paper, tiny or a config.json path"
    )
    g.add_argument(
        "--model_name_or_path",
        help="fine-tune a saved model: a model folder (a checkpoint-<step> too) or a "
        "Hub id; its config replaces --model_config",
    )
    g.add_argument(
        "--ignore_mismatched_sizes",
        action="store_true",
        help="with --model_name_or_path: a model of other classes than the "
        "dataset's gets fresh class layers for the dataset's classes",
    )
    g.add_argument(
        "--preset",
        choices=sorted(TABLE1_PRESETS),
        default=None,
        help="Table 1 row: baseline, oa (AGM-4), sc (+CoAM-4), ma (AGM-3/4/5), "
        "ac (+CoAM-3/4/5, the full AGEN)",
    )
    g.add_argument(
        "--agm_stages",
        type=int,
        nargs="*",
        default=None,
        metavar="N",
        help="a fresh model's AGM stages, any subset of 3 4 5 (Table 2's rows; "
        "none given: no AGM); applied after --preset",
    )
    g.add_argument(
        "--coam_stages",
        type=int,
        nargs="*",
        default=None,
        metavar="N",
        help="its CoAM stages, a subset of the AGM stages (Table 3's rows); applied after --preset",
    )
    g.add_argument("--boundary_crf", choices=["pydensecrf", "torch"], default=None)
    g.add_argument(
        "--boundary_crf_processes",
        type=non_negative,
        default=0,
        help="worker processes that run the boundary loss's pydensecrf over a "
        "batch's images in parallel (0: one after the other); on a fast GPU "
        "the serial CRF is a large share of the step (bench/gpu_check.py)",
    )
    g.add_argument("--use_boundary_loss", choices=["true", "false"], default=None)
    g.add_argument(
        "--seeding_warmup_steps",
        type=non_negative,
        default=0,
        help="train with the classification loss (eq. 11) alone for the first N "
        "steps (0: the paper, all losses from the start)",
    )
    g.add_argument(
        "--full_supervision",
        action="store_true",
        help="train branch B from ground-truth masks: the upper bound (it has no "
        "classification-first phase: --seeding_warmup_steps and "
        "--lr_restart_at do not apply)",
    )
    g.add_argument(
        "--vgg16_weights", help="torchvision VGG16(-BN) ImageNet state dict for the stem + branch A"
    )
    g.add_argument("--resnet38_weights", help="PSA's ImageNet ResNet-38 (.pth) for branch B")
    g.add_argument(
        "--cam_figure",
        type=non_negative,
        default=0,
        metavar="N",
        help="write cams.png with the first N val images after training (0: off)",
    )
    add_training_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    resolve_source(args, parser, default="synthetic")
    synthetic = args.dataset == "synthetic"
    size = args.synthetic_image_size
    args.crop_size = args.crop_size or (size if synthetic else 321)
    args.scale_range = args.scale_range or ((size, int(size * 1.5)) if synthetic else (321, 481))
    if args.full_supervision:  # one cycle: the restart belongs to the classification phase
        args.seeding_warmup_steps = args.lr_restart_at = 0
    return args


def build_model(args: argparse.Namespace, id2label: dict[int, str]) -> AgenModel:
    """A fresh model of ``--model_config`` for the dataset's classes ``id2label`` (with the
    ImageNet weights given by path), or the saved one of ``--model_name_or_path`` (which must
    know those classes, see :func:`agen_hf.hub.for_classes`); the loss flags apply to both,
    ``--preset``, ``--agm_stages`` and ``--coam_stages`` only to a fresh one."""
    saved = (
        for_classes(
            AgenModel.from_pretrained(args.model_name_or_path),
            id2label,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            model_name=args.model_name_or_path,
            data_name=f"the training data ({args.dataset})",
        )
        if args.model_name_or_path
        else None
    )
    config = saved.config if saved else AgenConfig.named(args.model_config).with_classes(id2label)
    stages = {
        name: tuple(getattr(args, name))
        for name in ("agm_stages", "coam_stages")
        if getattr(args, name) is not None
    }
    if (args.preset or stages) and saved:
        flag, what = (
            (f"--preset {args.preset}", "a preset")
            if args.preset
            else (f"--{next(iter(stages))}", "a stage flag")
        )
        raise SystemExit(
            f"{flag}: {args.model_name_or_path} has its own AGM and CoAM stages; "
            f"{what} builds a fresh model"
        )
    config = config.with_preset(args.preset) if args.preset else config
    try:
        config = dataclasses.replace(config, **stages)
    except ValueError as e:
        raise SystemExit(f"--agm_stages / --coam_stages: {e}") from None
    changes = {
        "boundary_crf": args.boundary_crf,
        "use_boundary_loss": None
        if args.use_boundary_loss is None
        else args.use_boundary_loss == "true",
    }
    model = AgenModel(
        dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    )
    if saved:
        model.load_state_dict(saved.state_dict())
    model.boundary_crf_processes = args.boundary_crf_processes
    for path, load in ((args.vgg16_weights, load_vgg16), (args.resnet38_weights, load_resnet38)):
        if path:
            logger.info("%s", load(model, path))
    logger.info("model %s", args.model_name_or_path or f"config {args.model_config}")
    return model


def datasets_for(args: argparse.Namespace):
    """The training split and the validation split to score (None when it has no masks)."""
    if args.dataset == "synthetic":
        return load_split(args, "train"), load_split(args, "val", role="eval")
    train = load_split(args, args.train_split)
    val = load_split(
        args,
        args.eval_split,
        role="eval",
        class_names_=class_names(train),
        require_foreground=False,
    )
    if val is not None and class_names(val) != class_names(train):
        raise SystemExit(
            f"the {args.eval_split} split names the classes "
            f"{list(class_names(val))}, the {args.train_split} split "
            f"{list(class_names(train))}"
        )
    return train, scored(val, f"the {args.eval_split} split")


def card(
    metrics: dict | None,
    config: AgenConfig,
    argv: list[str],
    args: argparse.Namespace,
    num_processes: int = 1,
) -> dict:
    """The model card: IoU table, model-index result, the stages, the command and config."""
    dataset = card_dataset(args)
    stages = f"AGM {list(config.agm_stages)}, CoAM {list(config.coam_stages)}"
    return model_card(
        metrics,
        config.label_names,
        command_line("recipes/train_voc.py", argv, num_processes=num_processes),
        f"{stages}.\n\n```json\n{config.to_json_string()}\n```",
        dataset,
    )


def compute_loss(args: argparse.Namespace):
    """L_total (eq. 15) from image-level labels (eq. 11 alone in the classification-first
    phase), or with ``--full_supervision`` the upper bound: branch B against the masks."""

    def loss(model, batch, process_group, step):
        if args.full_supervision:
            out = model(
                batch["pixel_values"],
                masks=batch["mask"],
                segmentation_only=True,
                process_group=process_group,
            )
        else:
            out = model(
                batch["pixel_values"],
                batch["labels"],
                process_group=process_group,
                classification_only=step < args.seeding_warmup_steps,
            )
        return out.loss, out.loss_terms

    return loss


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # full supervision trains branch B alone, the classification-first phase branch A alone
    accelerator = training_accelerator(
        args, find_unused_parameters=args.full_supervision or args.seeding_warmup_steps > 0
    )
    configure_logging(accelerator)
    set_seed(args.seed, deterministic=args.deterministic)

    with main_process_first(
        accelerator, "the data indexed by the main process first (its caches)"
    ):  # one process builds the caches
        train_ds, val_ds = datasets_for(args)
    model = build_model(args, id2label_for(class_names(train_ds)))
    config = model.config
    train_dl, val_dl = loaders_from_args(
        accelerator, args, train_ds, val_ds, config.image_mean, config.image_std
    )
    model, optimizer, base_lrs, train_dl = prepare_training(accelerator, args, model, train_dl)
    options, state = begin(accelerator, args, model, train_dl, train_ds, project="agen")

    started = time.time()
    state = train(
        accelerator,
        model,
        optimizer,
        base_lrs,
        train_dl,
        compute_loss(args),
        options,
        state,
        val_loader=val_dl,
        log_extras=base_model(accelerator, model).coam_weights,
    )
    result = finish(
        accelerator,
        args,
        model,
        val_dl,
        state,
        started,
        lambda metrics: card(metrics, config, argv, args, accelerator.num_processes),
        loaded=(train_ds, val_ds),
        supervision="full" if args.full_supervision else "image-level",
    )
    if args.cam_figure > 0 and val_ds is not None and accelerator.is_main_process:
        print(f"written {write_cam_figure(args.output_dir, val_ds, args.cam_figure)}")
    return result


if __name__ == "__main__":
    main()

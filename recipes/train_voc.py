#!/usr/bin/env python
"""Train AGEN end-to-end from image-level labels (section IV.1 of the paper), on any source.

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

import dataclasses
import logging
import os
import sys
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import datasets
from accelerate.utils import set_seed

from agen_hf import AgenConfig, AgenModel
from agen_hf.arguments import (
    ArgumentParser,
    flag,
    flag_values,
    json_object,
    non_negative,
    run_defining,
)
from agen_hf.configuration_agen import TABLE1_PRESETS
from agen_hf.data import class_names
from agen_hf.data.sources import SyntheticDataArguments, card_dataset, load_split, with_masks
from agen_hf.engine.accelerator import base_model, prepare_training, training_accelerator
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
from agen_hf.visualization import write_cam_figure
from agen_hf.weights import load_branch, load_resnet38, load_vgg16

logger = logging.getLogger("train_voc")


@dataclass
class AgenArguments:
    """The network a run trains (fresh, or saved), its Table 1-3 switches, and what it learns
    from."""

    group: ClassVar[str] = "model"
    model_config: str = flag("paper", "a fresh model: paper, tiny or a config.json path")
    model_name_or_path: str | None = flag(
        None,
        "fine-tune a saved model: a model folder (a checkpoint-<step> too) or a Hub id; its "
        "config replaces --model_config",
    )
    ignore_mismatched_sizes: bool = flag(
        False,
        "with --model_name_or_path: a model of other classes than the dataset's gets fresh "
        "class layers for the dataset's classes",
    )
    preset: str | None = flag(
        None,
        "Table 1 row: baseline, oa (AGM-4), sc (+CoAM-4), ma (AGM-3/4/5), ac (+CoAM-3/4/5, the "
        "full AGEN)",
        choices=sorted(TABLE1_PRESETS),
    )
    agm_stages: list[int] | None = flag(
        None,
        "a fresh model's AGM stages, any subset of 3 4 5 (Table 2's rows; none given: no AGM); "
        "applied after --preset",
        type=int,
        nargs="*",
        metavar="N",
    )
    coam_stages: list[int] | None = flag(
        None,
        "its CoAM stages, a subset of the AGM stages (Table 3's rows); applied after --preset",
        type=int,
        nargs="*",
        metavar="N",
    )
    branch_a: str | None = flag(
        None,
        "a fresh model's branch A backbone (the paper's: vgg16; also resnet38, resnet50, "
        "resnet101, convnext_tiny, timm:<model>: python -m agen_hf.backbones)",
    )
    branch_b: str | None = flag(None, "its branch B backbone (the paper's: resnet38)")
    branch_a_options: dict | None = flag(
        None,
        "branch A's backbone options as JSON, e.g. '{\"layers\": [3, 4, 6, 3]}' (timm: "
        "create_model's keywords)",
        type=json_object,
    )
    branch_b_options: dict | None = flag(None, "branch B's backbone options", type=json_object)
    share_stem: str | None = flag(
        None,
        "branch B follows branch A's stem (true: the paper's VGG conv1-conv2; default: where "
        "the pair can)",
        choices=["true", "false"],
    )
    boundary_crf: str | None = flag(None, choices=["pydensecrf", "torch"])
    boundary_crf_processes: int = flag(
        0,
        "worker processes that run the boundary loss's pydensecrf over a batch's images in "
        "parallel (0: one after the other); on a fast GPU the serial CRF is a large share of "
        "the step (bench/gpu_check.py)",
        type=non_negative,
    )
    use_boundary_loss: str | None = flag(None, choices=["true", "false"])
    seeding_warmup_steps: int = flag(
        0,
        "train with the classification loss (eq. 11) alone for the first N steps (0: the "
        "paper, all losses from the start)",
        type=non_negative,
        run=True,
    )
    full_supervision: bool = flag(
        False,
        "train branch B from ground-truth masks: the upper bound (it has no "
        "classification-first phase: --seeding_warmup_steps and --lr_restart_at do not apply)",
        run=True,
    )
    branch_a_weights: str | None = flag(
        None, "ImageNet weights of branch A's backbone (and its stem): a file of its family"
    )
    branch_b_weights: str | None = flag(None, "ImageNet weights of branch B's backbone")
    vgg16_weights: str | None = flag(
        None, "torchvision VGG16(-BN) ImageNet state dict for the vgg16 branch and its stem"
    )
    resnet38_weights: str | None = flag(
        None, "PSA's ImageNet ResNet-38 (.pth) for the resnet38 branch"
    )
    cam_figure: int = flag(
        0,
        "write cams.png with the first N val images after training (0: off)",
        type=non_negative,
        metavar="N",
    )


class Arguments(NamedTuple):
    data: SyntheticDataArguments
    model: AgenArguments
    training: TrainingArguments


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        SyntheticDataArguments,
        AgenArguments,
        TrainingArguments,
        config_file=True,
        description=__doc__.split("\n\n")[0],
    )


def parse_args(argv: list[str] | None = None) -> Arguments:
    """The flags, with what the recipe fills in: the data source and its splits (synthetic
    when none is named), the crop and rescale range of that data, and no learning-rate restart
    under full supervision (one cycle: the restart belongs to the classification phase)."""
    parser = build_parser()
    data, model, training = parser.parse(argv)
    try:
        data = data.resolved(default="synthetic")
    except ValueError as e:
        parser.error(str(e))
    size = data.synthetic_image_size
    synthetic = data.dataset == "synthetic"
    training = dataclasses.replace(
        training,
        crop_size=training.crop_size or (size if synthetic else 321),
        scale_range=training.scale_range or ((size, int(size * 1.5)) if synthetic else (321, 481)),
    )
    if model.full_supervision:
        model = dataclasses.replace(model, seeding_warmup_steps=0)
        training = dataclasses.replace(training, lr_restart_at=0)
    return Arguments(data, model, training)


def build_model(args: AgenArguments, id2label: dict[int, str], data_name: str) -> AgenModel:
    """A fresh model of ``--model_config`` for the dataset's classes ``id2label`` (with the
    ImageNet weights given by path), or the saved one of ``--model_name_or_path`` (which must
    know those classes, see :func:`agen_hf.hub.model_for_classes`); the loss flags apply to
    both, ``--preset``, ``--agm_stages`` and ``--coam_stages`` only to a fresh one."""
    saved = (
        model_for_classes(
            AgenModel.from_pretrained(args.model_name_or_path),
            id2label,
            ignore_mismatched_sizes=args.ignore_mismatched_sizes,
            model_name=args.model_name_or_path,
            data_name=f"the training data ({data_name})",
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
    backbones = {
        name: getattr(args, name)
        for name in ("branch_a", "branch_b", "branch_a_options", "branch_b_options")
        if getattr(args, name) is not None
    }
    if args.share_stem is not None:
        backbones["share_stem"] = args.share_stem == "true"
    elif backbones:
        backbones["share_stem"] = None  # resolved again for the new pair
    if (args.preset or stages or backbones) and saved:
        option, what = (
            (f"--preset {args.preset}", "a preset")
            if args.preset
            else (f"--{next(iter(stages or backbones))}", "a stage or backbone flag")
        )
        raise SystemExit(
            f"{option}: {args.model_name_or_path} has its own AGM and CoAM stages and "
            f"backbones; {what} builds a fresh model"
        )
    config = config.with_preset(args.preset) if args.preset else config
    try:
        config = dataclasses.replace(config, **stages)
    except ValueError as e:
        raise SystemExit(f"--agm_stages / --coam_stages: {e}") from None
    try:
        config = dataclasses.replace(config, **backbones)
    except ValueError as e:
        raise SystemExit(f"--{next(iter(backbones))}: {e}") from None
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
    for path, load in (
        (args.branch_a_weights, lambda m, p: load_branch(m, "a", p)),
        (args.branch_b_weights, lambda m, p: load_branch(m, "b", p)),
        (args.vgg16_weights, load_vgg16),
        (args.resnet38_weights, load_resnet38),
    ):
        if path:
            try:
                logger.info("%s", load(model, path))
            except ValueError as e:
                raise SystemExit(f"{path}: {e}") from None
    logger.info("model %s", args.model_name_or_path or f"config {args.model_config}")
    return model


def datasets_for(
    data: SyntheticDataArguments, training: TrainingArguments
) -> tuple[datasets.Dataset, datasets.Dataset | None]:
    """The training split and the validation split to score (None when it has no masks)."""
    if data.dataset == "synthetic":
        return (
            load_split(data, "train", seed=training.seed),
            load_split(data, "val", role="eval", seed=training.seed),
        )
    skip = training.skip_bad_samples
    train = load_split(data, data.train_split, skip_bad_samples=skip)
    val = load_split(
        data,
        data.eval_split,
        role="eval",
        class_names_=class_names(train),
        require_foreground=False,
        skip_bad_samples=skip,
    )
    if val is not None and class_names(val) != class_names(train):
        raise SystemExit(
            f"the {data.eval_split} split names the classes "
            f"{list(class_names(val))}, the {data.train_split} split "
            f"{list(class_names(train))}"
        )
    return train, with_masks(val, f"the {data.eval_split} split")


def card(
    metrics: dict | None,
    config: AgenConfig,
    argv: list[str],
    data: SyntheticDataArguments,
    agen: AgenArguments,
    num_processes: int = 1,
) -> dict:
    """The model card: IoU table, model-index result, the backbones and their weight files,
    the stages, the command and config."""
    files = {
        "a": agen.branch_a_weights or (agen.vgg16_weights if config.branch_a == "vgg16" else None),
        "b": agen.branch_b_weights
        or (agen.resnet38_weights if config.branch_b == "resnet38" else None),
    }
    start = (
        f"from {agen.model_name_or_path}"
        if agen.model_name_or_path
        else "no pretrained weights: from scratch"
    )
    backbones = ", ".join(
        f"branch {b.upper()} {getattr(config, f'branch_{b}')} "
        f"({'ImageNet weights ' + files[b] if files[b] else start})"
        for b in ("a", "b")
    )
    stem = "shared stem" if config.share_stem else "a stem each"
    stages = f"AGM {list(config.agm_stages)}, CoAM {list(config.coam_stages)}"
    return model_card(
        metrics,
        config.label_names,
        command_line("recipes/train_voc.py", argv, num_processes=num_processes),
        f"Backbones: {backbones}; {stem}. {stages}.\n\n```json\n{config.to_json_string()}\n```",
        card_dataset(data),
    )


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    data, agen, training = parse_args(argv)
    if training.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    configure_logging()
    # eq. 15 from image-level labels, or the upper bound from the masks
    supervision = Supervision(agen.full_supervision, agen.seeding_warmup_steps)
    # full supervision trains branch B alone, the classification-first phase branch A alone
    accelerator = training_accelerator(
        training, find_unused_parameters=agen.full_supervision or agen.seeding_warmup_steps > 0
    )
    set_seed(training.seed, deterministic=training.deterministic)

    with main_process_first(accelerator, "the data indexed by the main process first"):
        train_ds, val_ds = datasets_for(data, training)
    model = build_model(agen, id2label_for(class_names(train_ds)), data.dataset)
    config = model.config
    train_dl, val_dl = training_loaders(
        accelerator, training, train_ds, val_ds, config.image_mean, config.image_std
    )
    model, optimizer, base_lrs, train_dl = prepare_training(accelerator, model, train_dl, training)
    run = TrainingRun(
        accelerator,
        training,
        flag_values(data, agen, training),
        run_defining(data, agen, training),
        project="agen",
    )
    options, state = run.start(model, train_dl, train_ds)
    state = train(
        accelerator,
        model,
        optimizer,
        base_lrs,
        train_dl,
        supervision,
        options,
        state,
        val_loader=val_dl,
        log_extras=base_model(accelerator, model).coam_weights,
    )
    result = run.finish(
        model,
        val_dl,
        state,
        lambda metrics: card(metrics, config, argv, data, agen, accelerator.num_processes),
        loaded=(train_ds, val_ds),
        supervision="full" if agen.full_supervision else "image-level",
    )
    if agen.cam_figure > 0 and val_ds is not None and accelerator.is_main_process:
        print(f"written {write_cam_figure(training.output_dir, val_ds, agen.cam_figure)}")
    return result


if __name__ == "__main__":
    main()

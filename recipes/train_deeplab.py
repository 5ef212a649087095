#!/usr/bin/env python
"""Step two of two-step AGEN (paper Table 5): train DeepLab on AGEN's pseudo labels.

    accelerate launch recipes/make_pseudo_labels.py --model runs/agen --voc_root VOC2012 \
        --crf --out pseudo
    accelerate launch recipes/train_deeplab.py --pseudo_root pseudo --voc_root VOC2012 \
        --backbone resnet101 --backbone_weights resnet101-63fe2227.pth --output_dir runs/agen-resnet
    accelerate launch recipes/train_deeplab.py --pseudo_root pseudo --voc_root VOC2012 \
        --backbone vgg16 --head aspp --backbone_weights vgg16-397923af.pth --output_dir runs/agen-vgg

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
from pathlib import Path

import datasets
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from accelerate.utils import set_seed  # noqa: E402

from agen_hf.data import VocDataError, load_voc  # noqa: E402
from agen_hf.deeplab import BACKBONES, VGG_HEADS, DeepLabConfig, DeepLabModel  # noqa: E402
from agen_hf.engine.loop import (add_training_arguments, build_optimizer,  # noqa: E402
                                 parse_with_config, run_training, training_accelerator,
                                 training_loaders)
from agen_hf.engine.redaction import command_line  # noqa: E402
from agen_hf.losses import fully_supervised_loss  # noqa: E402
from agen_hf.metrics.report import class_iou_markdown  # noqa: E402
from agen_hf.weights import load_resnet101, load_vgg16  # noqa: E402

logger = logging.getLogger("train_deeplab")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of flag values (dest names as keys)")
    g = p.add_argument_group("data")
    g.add_argument("--pseudo_root", required=False,
                   help="make_pseudo_labels.py's output (a VOC root), or its pseudo_labels.arrow")
    g.add_argument("--train_split", default="train_aug")
    g.add_argument("--voc_root", help="VOC root with ground-truth masks for validation")
    g.add_argument("--eval_split", default="val")
    g.add_argument("--crop_size", type=int, default=321)
    g.add_argument("--scale_range", type=int, nargs=2, default=[321, 481])
    g.add_argument("--skip_bad_samples", action="store_true")
    g.add_argument("--num_workers", type=int, default=2)
    g = p.add_argument_group("model")
    g.add_argument("--backbone", choices=BACKBONES, default="resnet101")
    g.add_argument("--head", choices=VGG_HEADS, default="aspp",
                   help="VGG16 head: largefov or aspp (DeepLab-v2 ASPP-L)")
    g.add_argument("--model_config", help="a DeepLabConfig JSON (overrides --backbone/--head)")
    g.add_argument("--backbone_weights",
                   help="ImageNet weights by path: torchvision resnet101 or vgg16 state dict")
    add_training_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if not args.pseudo_root or not args.voc_root:
        parser.error("give --pseudo_root (make_pseudo_labels.py's output) and --voc_root "
                     "(ground truth for validation)")
    return args


def model_config(args: argparse.Namespace) -> DeepLabConfig:
    if args.model_config:
        import json

        try:
            return DeepLabConfig(**json.loads(Path(args.model_config).read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise SystemExit(f"--model_config {args.model_config}: {e}") from None
    return DeepLabConfig(backbone=args.backbone, head=args.head)


def pseudo_dataset(args: argparse.Namespace) -> datasets.Dataset:
    path = Path(args.pseudo_root)
    if path.suffix == ".arrow":
        return load_voc(datasets.Dataset.from_file(str(path)))
    return load_voc(path, args.train_split, skip_bad_samples=args.skip_bad_samples,
                    require_foreground=False)


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    accelerator = training_accelerator(args)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed, deterministic=args.deterministic)
    try:
        with accelerator.main_process_first():
            train_ds = pseudo_dataset(args)
            val_ds = load_voc(args.voc_root, args.eval_split,
                              skip_bad_samples=args.skip_bad_samples)
    except VocDataError as e:
        raise SystemExit(str(e)) from None
    train_loader, val_loader = training_loaders(accelerator, args, train_ds, val_ds)

    config = model_config(args)
    model = DeepLabModel(config)
    if args.backbone_weights:
        load = load_resnet101 if config.backbone == "resnet101" else load_vgg16
        logger.info("%s", load(model, args.backbone_weights))
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, base_lrs = build_optimizer(model, args)

    def compute_loss(model, batch, data_parallel, step):
        logits = model(batch["pixel_values"]).logits
        loss = fully_supervised_loss(logits, batch["mask"], config.ignore_index, data_parallel)
        return loss, {"seg_pseudo": loss}

    def model_card(metrics: dict) -> dict:
        names = [config.id2label[i] for i in range(config.num_labels)]
        command = command_line("recipes/train_deeplab.py", argv)
        return {"metrics": class_iou_markdown(metrics["per_category_iou"], metrics["mean_iou"],
                                              names),
                "training": f"Two-step AGEN: DeepLab ({config.backbone}) trained on AGEN's "
                            f"pseudo labels.\n\n```bash\n{command}\n```"}

    return run_training(accelerator, args, model, optimizer, base_lrs, train_loader,
                        val_loader, compute_loss, project="agen-deeplab",
                        model_card=model_card, result_extras={"supervision": "pseudo labels"})


if __name__ == "__main__":
    main()

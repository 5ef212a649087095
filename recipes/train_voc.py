#!/usr/bin/env python
"""Train AGEN end-to-end from image-level labels (section IV.1 of the paper).

    accelerate launch recipes/train_voc.py --voc_root /data/VOCdevkit/VOC2012
    accelerate launch --config_file launch/cpu.yaml recipes/train_voc.py --dataset synthetic \
        --model_config tiny

Defaults are the paper's schedule: SGD (momentum 0.9, weight decay 5e-4), lr 1e-3 for the
ImageNet-initialised backbone and 1e-2 for the AGMs and new heads, divided by 10 every 10
epochs, 35 epochs, batch 15, crops of 321. Every option is a flag and can come from a YAML or
JSON file (``--config run.yaml``; flags on the command line win). The same script runs on one
CPU, one GPU, many GPUs and many nodes: Accelerate does the device work.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from accelerate.utils import set_seed  # noqa: E402

from agen_hf import AgenConfig, AgenModel  # noqa: E402
from agen_hf.data import load_voc, make_synthetic  # noqa: E402
from agen_hf.engine.loop import (add_training_arguments, build_optimizer,  # noqa: E402
                                 parse_with_config, run_training, training_accelerator,
                                 training_loaders)
from agen_hf.engine.redaction import command_line  # noqa: E402
from agen_hf.inference import save_image_atomic  # noqa: E402
from agen_hf.losses import fully_supervised_loss  # noqa: E402
from agen_hf.metrics.report import class_iou_markdown  # noqa: E402
from agen_hf.visualization import cam_figure  # noqa: E402
from agen_hf.weights import load_resnet38, load_vgg16  # noqa: E402

logger = logging.getLogger("train_voc")

PRESETS = {  # Table 1 rows: (agm_stages, coam_stages)
    "baseline": ((), ()), "oa": ((4,), ()), "sc": ((4,), (4,)), "ma": ((3, 4, 5), ()),
    "ac": ((3, 4, 5), (3, 4, 5)),
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--config", help="YAML or JSON file of flag values (dest names as keys)")
    g = p.add_argument_group("data")
    g.add_argument("--dataset", choices=["voc", "synthetic"], default=None,
                   help="voc (needs --voc_root or --dataset_name) or the embedded synthetic data")
    g.add_argument("--voc_root", help="local VOCdevkit/VOC2012 (with SegmentationClassAug)")
    g.add_argument("--dataset_name", help="a Hub dataset id in the VOC schema")
    g.add_argument("--train_split", default="train_aug")
    g.add_argument("--eval_split", default="val")
    g.add_argument("--synthetic_size", type=int, default=2000)
    g.add_argument("--synthetic_val_size", type=int, default=200)
    g.add_argument("--synthetic_image_size", type=int, default=128)
    g.add_argument("--crop_size", type=int, default=None,
                   help="training crop (paper: 321; synthetic: its image size)")
    g.add_argument("--scale_range", type=int, nargs=2, default=None,
                   help="long-side range of the random rescale (paper: 321 481)")
    g.add_argument("--skip_bad_samples", action="store_true")
    g.add_argument("--num_workers", type=int, default=2)
    g = p.add_argument_group("model")
    g.add_argument("--model_config", default="paper", help="paper, tiny or a config.json path")
    g.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="Table 1 row: baseline, oa (AGM-4), sc (+CoAM-4), ma (AGM-3/4/5), "
                        "ac (+CoAM-3/4/5, the full AGEN)")
    g.add_argument("--boundary_crf", choices=["pydensecrf", "torch"], default=None)
    g.add_argument("--use_boundary_loss", choices=["true", "false"], default=None)
    g.add_argument("--seeding_warmup_steps", type=int, default=0,
                   help="train with the classification loss (eq. 11) alone for the first N "
                        "steps (0: the paper, all losses from the start)")
    g.add_argument("--full_supervision", action="store_true",
                   help="train branch B from ground-truth masks: the upper bound")
    g.add_argument("--vgg16_weights",
                   help="torchvision VGG16(-BN) ImageNet state dict for the stem + branch A")
    g.add_argument("--resnet38_weights",
                   help="PSA's ImageNet ResNet-38 (.pth) for branch B")
    g.add_argument("--cam_figure", type=int, default=0, metavar="N",
                   help="write cams.png with the first N val images after training (0: off)")
    add_training_arguments(p)
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    if args.dataset is None:
        args.dataset = "voc" if (args.voc_root or args.dataset_name) else "synthetic"
    if args.dataset == "voc" and not (args.voc_root or args.dataset_name):
        parser.error("--dataset voc needs --voc_root DIR or --dataset_name HUB_ID")
    synthetic = args.dataset == "synthetic"
    size = args.synthetic_image_size
    args.crop_size = args.crop_size or (size if synthetic else 321)
    args.scale_range = args.scale_range or ((size, int(size * 1.5)) if synthetic else (321, 481))
    return args


def model_config(args: argparse.Namespace) -> AgenConfig:
    if args.model_config == "paper":
        values = AgenConfig().to_dict()
    elif args.model_config == "tiny":
        values = AgenConfig.tiny().to_dict()
    else:
        values = AgenConfig.from_json_file(args.model_config).to_dict()
    if args.preset:
        values["agm_stages"], values["coam_stages"] = PRESETS[args.preset]
    if args.boundary_crf:
        values["boundary_crf"] = args.boundary_crf
    if args.use_boundary_loss:
        values["use_boundary_loss"] = args.use_boundary_loss == "true"
    return AgenConfig.from_dict(values)


def datasets_for(args: argparse.Namespace):
    if args.dataset == "synthetic":
        return (make_synthetic(args.synthetic_size, seed=args.seed,
                               image_size=args.synthetic_image_size),
                make_synthetic(args.synthetic_val_size, seed=args.seed + 1_000_003,
                               image_size=args.synthetic_image_size))
    source = args.voc_root or args.dataset_name
    return (load_voc(source, args.train_split, skip_bad_samples=args.skip_bad_samples),
            load_voc(source, args.eval_split, skip_bad_samples=args.skip_bad_samples))


def model_card(metrics: dict | None, config: AgenConfig, argv: list[str]) -> dict:
    names = [config.id2label[i] for i in range(config.num_labels)]
    table = class_iou_markdown(metrics["per_category_iou"], metrics["mean_iou"], names) \
        if metrics else None
    command = command_line("recipes/train_voc.py", argv)
    stages = f"AGM {list(config.agm_stages)}, CoAM {list(config.coam_stages)}"
    return {"metrics": table,
            "training": f"{stages}.\n\n```bash\n{command}\n```\n\n```json\n"
                        f"{config.to_json_string()}\n```"}


def write_cam_figure(model_dir: str | Path, val_ds, n: int) -> Path:
    """``model_dir/cams.png``: for the first ``n`` val images, the input, its ground truth,
    the CAMs of branch A and of every AGM before/after CoAM (for its classes) and branch B's
    prediction (:func:`agen_hf.visualization.cam_figure`)."""
    model = AgenModel.from_pretrained(model_dir).eval()
    rows = val_ds.select(range(min(n, len(val_ds))))
    labels = [[c for c, on in enumerate(multi_hot) if on] for multi_hot in rows["labels"]]
    figure = cam_figure(model, rows["image"], labels, masks=rows["mask"], prediction=True)
    path = Path(model_dir) / "cams.png"
    save_image_atomic(figure, path)
    return path


def compute_loss(args: argparse.Namespace, ignore_index: int):
    """L_total (eq. 15) from image-level labels, or the upper bound's cross-entropy of branch
    B against the masks with ``--full_supervision``."""
    def loss(model, batch, data_parallel, step):
        if args.full_supervision:
            logits = model(batch["pixel_values"], segmentation_only=True).logits
            value = fully_supervised_loss(logits, batch["mask"], ignore_index, data_parallel)
            return value, {"seg_B_full": value}
        out = model(batch["pixel_values"], batch["labels"], data_parallel=data_parallel,
                    classification_only=step < args.seeding_warmup_steps)
        return out.loss, out.loss_terms
    return loss


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    # full supervision trains branch B alone, the classification-first phase branch A alone
    accelerator = training_accelerator(
        args, find_unused_parameters=args.full_supervision or args.seeding_warmup_steps > 0)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        level=logging.INFO if accelerator.is_main_process else logging.WARNING)
    set_seed(args.seed, deterministic=args.deterministic)

    # data
    with accelerator.main_process_first():  # one process builds the caches
        train_ds, val_ds = datasets_for(args)
    train_loader, val_loader = training_loaders(accelerator, args, train_ds, val_ds)

    # model
    config = model_config(args)
    model = AgenModel(config)
    for path, load in ((args.vgg16_weights, load_vgg16), (args.resnet38_weights, load_resnet38)):
        if path:
            logger.info("%s", load(model, path))
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, base_lrs = build_optimizer(model, args)
    logger.info("model config %s", args.model_config)
    result = run_training(
        accelerator, args, model, optimizer, base_lrs, train_loader, val_loader,
        compute_loss(args, config.ignore_index),
        log_extras=lambda m: {f"coam{n}_lambda": c.weight.item() for n, c in m.coam.items()},
        model_card=lambda metrics: model_card(metrics, config, argv),
        result_extras={"supervision": "full" if args.full_supervision else "image-level"})
    if args.cam_figure > 0 and accelerator.is_main_process:
        print(f"written {write_cam_figure(args.output_dir, val_ds, args.cam_figure)}")
    return result


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Draw the paper's figures for a trained AGEN: Fig. 4 (CAMs of branch A and of AGM-5/4/3
before and after CoAM) and Fig. 5 (input / ground truth / prediction).

    python recipes/visualize.py --model runs/agen --voc_root /data/VOCdevkit/VOC2012 \
        --ids 2007_000129 2007_000033 --out figures
    python recipes/visualize.py --model runs/agen --images cat.jpg dog.png --out figures

With a dataset (--voc_root, --coco_root, --train_dir/--validation_dir, --dataset_name) the CAMs
are drawn for each image's ground-truth classes and Fig. 5 has a
ground-truth column; with --images the classes are the ones branch A predicts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import datasets
from PIL import Image

from agen_hf import AgenImageProcessor, AgenModel, segment
from agen_hf.data import class_names
from agen_hf.data.samples import decode_sample
from agen_hf.data.sources import add_data_arguments, load_split, resolve_source
from agen_hf.engine.arguments import HelpFormatter
from agen_hf.engine.inference_arguments import (
    add_inference_arguments,
    add_model_argument,
    add_output_argument,
)
from agen_hf.visualization import cam_figure, segmentation_figure


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter)
    add_model_argument(p)
    add_data_arguments(p.add_argument_group("data (or --images)"))
    p.add_argument("--images", nargs="+", help="image files (instead of a dataset)")
    p.add_argument("--split", default=None, help="default: --eval_split's")
    p.add_argument("--ids", nargs="+", help="ids to draw (default: the first --num_images)")
    p.add_argument("--num_images", type=int, default=6)
    add_inference_arguments(p, device=False, crf=False)
    p.add_argument("--cell", type=int, default=160, help="side of each picture in pixels")
    add_output_argument(p, "folder of the figures", default="figures")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.images:
        resolve_source(args, parser)
        args.split = args.split or args.eval_split
    model = AgenModel.from_pretrained(args.model_name_or_path).eval()
    processor = AgenImageProcessor.from_pretrained(args.model_name_or_path)
    labels = masks = None
    if not args.images:
        names = model.config.label_names[1:]
        dataset = load_split(
            args, args.split, role="eval", class_names_=names, require_foreground=False
        )
        if dataset is None or class_names(dataset) != tuple(names):
            raise SystemExit(
                f"the {args.split} split is missing or names other classes than "
                f"{args.model_name_or_path} ({names})"
            )
        index = {sid: i for i, sid in enumerate(dataset["id"])}
        ids = args.ids or dataset["id"][: args.num_images]
        missing = [sid for sid in ids if sid not in index]
        if missing:
            raise SystemExit(f"--ids: {', '.join(missing)} not in the {args.split} split")
        raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
            "mask", datasets.Image(decode=False)
        )
        images, masks, labels = [], [], []
        for sid in ids:
            row = raw[index[sid]]
            image, mask = decode_sample(row["image"], row["mask"], len(names))
            images.append(image.convert("RGB"))
            masks.append(mask)
            labels.append(list(row["labels"]))
    else:
        images = [Image.open(p) for p in args.images]
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    cell = (args.cell, args.cell)
    paths = [out / "fig4_cams.png", out / "fig5_segmentation.png"]
    cam_figure(model, images, labels, processor, cell).save(paths[0])
    predictions = {
        "AGEN": segment(model, list(images), processor, scales=args.scales, flip=args.flip)
    }
    segmentation_figure(images, predictions, masks, cell).save(paths[1])
    for path in paths:
        print(f"written {path}")
    return paths


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Draw the paper's figures for a trained AGEN: Fig. 4 (CAMs of branch A and of AGM-5/4/3
before and after CoAM) and Fig. 5 (input / ground truth / prediction).

    python recipes/visualize.py --model runs/agen --voc_root /data/VOCdevkit/VOC2012 \
        --ids 2007_000129 2007_000033 --out figures
    python recipes/visualize.py --model runs/agen --images cat.jpg dog.png --out figures

With --voc_root the CAMs are drawn for each image's ground-truth classes and Fig. 5 has a
ground-truth column; with --images the classes are the ones branch A predicts.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import datasets
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout too

from agen_hf import AgenImageProcessor, AgenModel, segment  # noqa: E402
from agen_hf.data import load_voc  # noqa: E402
from agen_hf.data.samples import decode_sample  # noqa: E402
from agen_hf.visualization import cam_figure, segmentation_figure  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--model", required=True, help="a saved model folder or a Hub model id")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--voc_root", help="local VOCdevkit/VOC2012")
    src.add_argument("--images", nargs="+", help="image files")
    p.add_argument("--split", default="val")
    p.add_argument("--ids", nargs="+", help="VOC ids to draw (default: the first --num_images)")
    p.add_argument("--num_images", type=int, default=6)
    p.add_argument("--scales", type=float, nargs="+", default=[1.0])
    p.add_argument("--flip", action="store_true")
    p.add_argument("--cell", type=int, default=160, help="side of each picture in pixels")
    p.add_argument("--out", default="figures")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    args = build_parser().parse_args(argv)
    model = AgenModel.from_pretrained(args.model).eval()
    processor = AgenImageProcessor.from_pretrained(args.model)
    labels = masks = None
    if args.voc_root:
        dataset = load_voc(args.voc_root, args.split)
        index = {sid: i for i, sid in enumerate(dataset["id"])}
        ids = args.ids or dataset["id"][: args.num_images]
        missing = [sid for sid in ids if sid not in index]
        if missing:
            raise SystemExit(f"--ids: {', '.join(missing)} not in the {args.split} split")
        raw = dataset.cast_column("image", datasets.Image(decode=False)).cast_column(
            "mask", datasets.Image(decode=False))
        images, masks, labels = [], [], []
        for sid in ids:
            row = raw[index[sid]]
            image, mask = decode_sample(row["image"], row["mask"])
            images.append(image.convert("RGB"))
            masks.append(mask)
            labels.append([c for c, on in enumerate(row["labels"]) if on])
    else:
        images = [Image.open(p) for p in args.images]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cell = (args.cell, args.cell)
    paths = [out / "fig4_cams.png", out / "fig5_segmentation.png"]
    cam_figure(model, images, labels, processor, cell).save(paths[0])
    predictions = {"AGEN": segment(model, list(images), processor, scales=args.scales,
                                   flip=args.flip)}
    segmentation_figure(images, predictions, masks, cell).save(paths[1])
    for path in paths:
        print(f"written {path}")
    return paths


if __name__ == "__main__":
    main()

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

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import datasets
from PIL import Image

from agen_hf import AgenImageProcessor, AgenModel, segment
from agen_hf.arguments import ArgumentParser, flag
from agen_hf.data import class_names
from agen_hf.data.decoding import decode_sample
from agen_hf.data.sources import DataArguments, load_split
from agen_hf.engine.arguments import ModelArguments, TestTimeAugmentation
from agen_hf.visualization import cam_figure, segmentation_figure


@dataclass
class DataOrImages(DataArguments):
    """A dataset (with ground truth) or image files."""

    group: ClassVar[str] = "data (or --images)"


@dataclass
class FigureArguments:
    """Which images to draw, how large, where."""

    images: list[str] | None = flag(None, "image files (instead of a dataset)", nargs="+")
    split: str | None = flag(None, "default: --eval_split's")
    ids: list[str] | None = flag(None, "ids to draw (default: the first --num_images)", nargs="+")
    num_images: int = flag(6, type=int)
    cell: int = flag(160, "side of each picture in pixels", type=int)
    output_dir: str = flag("figures", "folder of the figures", aliases=["--out"])


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        ModelArguments,
        DataOrImages,
        FigureArguments,
        TestTimeAugmentation,
        description=__doc__.split("\n\n")[0],
    )


def main(argv: list[str] | None = None) -> list[Path]:
    parser = build_parser()
    model_args, data, args, tta = parser.parse(argv)
    if not args.images:
        try:
            data = data.resolved()
        except ValueError as e:
            parser.error(str(e))
        args = dataclasses.replace(args, split=args.split or data.eval_split)
    model = AgenModel.from_pretrained(model_args.model_name_or_path).eval()
    processor = AgenImageProcessor.from_pretrained(model_args.model_name_or_path)
    labels = masks = None
    if not args.images:
        names = model.config.label_names[1:]
        dataset = load_split(
            data, args.split, role="eval", class_names_=names, require_foreground=False
        )
        if dataset is None or class_names(dataset) != tuple(names):
            raise SystemExit(
                f"the {args.split} split is missing or names other classes than "
                f"{model_args.model_name_or_path} ({names})"
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
        "AGEN": segment(model, list(images), processor, scales=tta.scales, flip=tta.flip)
    }
    segmentation_figure(images, predictions, masks, cell).save(paths[1])
    for path in paths:
        print(f"written {path}")
    return paths


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Step one of two-step AGEN (paper Table 5): AGEN's segmentation of the training images as
pseudo ground truth for a fully supervised network (recipes/train_deeplab.py).

    accelerate launch recipes/make_pseudo_labels.py --model runs/agen \
        --voc_root /data/VOCdevkit/VOC2012 --scales 0.5 1 1.5 2 --flip --crf --out pseudo
    accelerate launch recipes/make_pseudo_labels.py --model runs/agen-coco --coco_root /data/coco \
        --out pseudo-coco
    python recipes/make_pseudo_labels.py --model runs/mine --train_dir photos/ --out pseudo-mine

Writes a VOC root that ``load_voc`` and ``train_deeplab.py --pseudo_root`` read:
``OUT/SegmentationClassAug/<id>.png`` (palette PNGs), ``OUT/ImageSets/Segmentation/<split>.txt``
and ``OUT/JPEGImages`` (a link to the source images); ``--format datasets`` also writes
``OUT/pseudo_labels.arrow``, the same rows as a ``datasets`` table (``Dataset.from_file``) that
names the classes. Any source but VOC always gets the table (its classes and image paths are
not VOC's), and ``train_deeplab.py --pseudo_root OUT`` reads it.
Predictions are restricted to background + each image's image-level classes (known for
training images; ``--no_label_restriction`` turns that off). Where ground-truth masks exist,
the pseudo labels' mIoU against them is printed and written to ``OUT/pseudo_labels_report.json``.
"""

import dataclasses
import itertools
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from agen_hf import AgenImageProcessor
from agen_hf.arguments import ArgumentParser, flag
from agen_hf.atomic import save_image_atomic, write_text_atomic
from agen_hf.auto import load_segmentation_model
from agen_hf.data import DataError, class_names, features
from agen_hf.data.cache import cached_arrow
from agen_hf.data.decoding import decode_sample, skipped_when_loaded
from agen_hf.data.sources import DataArguments, load_split
from agen_hf.engine import cpus_per_process, make_accelerator
from agen_hf.engine.arguments import (
    CrfArguments,
    DeviceArguments,
    ModelArguments,
    TestTimeAugmentation,
)
from agen_hf.engine.distributed import gather_objects, main_process_first, sum_over_processes
from agen_hf.engine.evaluation import merged, summed_over_processes
from agen_hf.engine.exits import crf_problems, end_run, skipped_problems
from agen_hf.engine.logs import configure_logging
from agen_hf.inference import SegmentationStream, as_is
from agen_hf.labels import same_classes_or_raise
from agen_hf.metrics import StreamingMeanIoU
from agen_hf.metrics.report import iou_table
from agen_hf.progress import progress
from agen_hf.visualization import label_image

MASK_DIR = "SegmentationClassAug"
logger = logging.getLogger("agen_hf")


@dataclass
class PseudoLabelArguments:
    """Which split to label, what to write, and how."""

    split: str | None = flag(None, "the split to label (default: --train_split's)")
    labels_file: str | None = flag(None, "VOC: JSON id -> classes, for ids without a mask")
    output_dir: str = flag(
        None, "the pseudo-label VOC root to write", aliases=["--out"], required=True
    )
    format: str = flag(
        "voc", "datasets: also write OUT/pseudo_labels.arrow", choices=["voc", "datasets"]
    )
    no_label_restriction: bool = flag(
        False, "let the prediction use classes outside the image-level labels"
    )
    skip_bad_samples: bool = flag(False)


def build_parser() -> ArgumentParser:
    return ArgumentParser(
        ModelArguments,
        DataArguments,
        PseudoLabelArguments,
        TestTimeAugmentation,
        DeviceArguments,
        CrfArguments,
        description=__doc__.split("\n\n")[0],
    )


def parse_args(
    argv: list[str] | None = None,
) -> tuple[
    ModelArguments,
    DataArguments,
    PseudoLabelArguments,
    TestTimeAugmentation,
    DeviceArguments,
    CrfArguments,
]:
    """The flags, with what the recipe fills in: the source and its splits, the split to label
    (``--train_split``'s by default), and ``--format datasets`` for any source but VOC (its
    classes and image paths are not VOC's)."""
    parser = build_parser()
    model, data, pseudo, tta, device, crf = parser.parse(argv)
    try:
        data = data.resolved()
    except ValueError as e:
        parser.error(str(e))
    pseudo = dataclasses.replace(pseudo, split=pseudo.split or data.train_split)
    if data.dataset != "voc" and pseudo.format != "datasets":
        print(
            f"--format datasets: {data.dataset} images are not VOC's, so the pseudo labels "
            "also go into OUT/pseudo_labels.arrow, which names their classes"
        )
        pseudo = dataclasses.replace(pseudo, format="datasets")
    return model, data, pseudo, tta, device, crf


class TrainingImages(Dataset):
    """Decoded RGB, image-level classes and ground truth (when there is a mask) per id; a
    bad image or mask (:class:`DataError`) becomes an item with its ``error``."""

    def __init__(self, rows: datasets.Dataset, num_classes: int) -> None:
        self.rows = rows
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        try:
            image, mask = decode_sample(row["image"], row["mask"], self.num_classes)
        except DataError as e:
            return {"id": row["id"], "error": str(e)}
        classes = np.asarray(row["labels"], dtype=np.int64) + 1
        return {
            "id": row["id"],
            "rgb": np.array(image.convert("RGB")),
            "classes": classes,
            "mask": mask,
        }


def main(argv: list[str] | None = None) -> dict:
    model_args, data, pseudo, tta, device, crf_args = parse_args(argv)
    configure_logging()
    accelerator = make_accelerator(
        device.cpu, mixed_precision=device.mixed_precision, ddp_timeout=device.ddp_timeout
    )
    out = Path(pseudo.output_dir)
    model_name, split = model_args.model_name_or_path, pseudo.split
    model = load_segmentation_model(model_name).to(accelerator.device).eval()
    names = model.config.label_names[1:]
    try:
        with main_process_first(accelerator, "the split indexed by the main process first"):
            rows = load_split(
                data,
                split,
                class_names_=names,
                skip_bad_samples=pseudo.skip_bad_samples,
                labels_file=pseudo.labels_file,
            )
        same_classes_or_raise(
            names,
            class_names(rows),
            model_name,
            f"the {split} split",
            "label data of the model's classes",
        )
    except (DataError, ValueError) as e:
        raise SystemExit(str(e)) from None
    try:
        check_output_ids(rows["id"], out / MASK_DIR)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    rows = rows.cast_column("image", datasets.Image(decode=False)).cast_column(
        "mask", datasets.Image(decode=False)
    )
    source_images = Path(rows[0]["image"]["path"]).parent if len(rows) else None
    processor = AgenImageProcessor.from_pretrained(model_name)
    (out / MASK_DIR).mkdir(parents=True, exist_ok=True)
    mine = rows.select(range(accelerator.process_index, len(rows), accelerator.num_processes))
    metric = StreamingMeanIoU(model.config.num_labels, model.config.ignore_index)
    with crf_args.crf_pool(cpus_per_process()) as crf:
        stream = SegmentationStream(
            model, processor, crf, accelerator.autocast, scales=tta.scales, flip=tta.flip
        )
        scored, skipped = label_rows(
            accelerator,
            stream,
            mine,
            len(names),
            out,
            metric,
            num_workers=device.num_workers,
            skip_bad_samples=pseudo.skip_bad_samples,
            label_restriction=not pseudo.no_label_restriction,
        )
        counts = torch.tensor([scored, crf.workers_replaced if crf else 0])
    # every process has written its PNGs once these three are done
    summed_over_processes(accelerator, metric, "the pseudo labels' confusion-matrix sum")
    scored, replaced = sum_over_processes(
        accelerator, counts, "the counts of scored images and replaced CRF workers"
    ).tolist()
    skipped = merged(gather_objects(skipped, "the list of skipped images"))
    skipped_at_load = skipped_when_loaded(rows)
    if skipped:
        rows = rows.filter(lambda sample_id: sample_id not in skipped, input_columns="id")
    report = {
        "model": model_name,
        "split": split,
        "images": len(rows),
        "scales": tta.scales,
        "flip": tta.flip,
        "crf": crf_args.crf,
        "label_restriction": not pseudo.no_label_restriction,
        "scored_against_ground_truth": scored,
        "skipped_when_loaded": skipped_at_load,
        "skipped": skipped,
    }
    if accelerator.is_main_process:
        if scored:
            m = metric.compute()
            names = model.config.label_names
            report["mean_iou"] = float(m["mean_iou"])
            report["per_category_iou"] = {n: float(v) for n, v in zip(names, m["per_category_iou"])}
            print(f"pseudo labels vs ground truth ({scored} images):\n")
            print(iou_table(m["per_category_iou"], m["mean_iou"], names, "pseudo"))
        write_voc_root(out, rows, split, source_images, pseudo.format, report)
        write_text_atomic(out / "pseudo_labels_report.json", json.dumps(report, indent=2) + "\n")
        print(f"\n{len(rows)} pseudo labels written to {out / MASK_DIR}")
    end_run(
        accelerator,
        crf_problems(replaced)
        + skipped_problems(
            skipped_at_load + len(skipped),
            "bad images",
            "and have no pseudo label",
            f"{out / 'pseudo_labels_report.json'} and the warnings name them",
        ),
    )
    return report


def label_rows(
    accelerator,
    stream: SegmentationStream,
    rows: datasets.Dataset,
    num_classes: int,
    out: Path,
    metric: StreamingMeanIoU,
    *,
    num_workers: int = 0,
    skip_bad_samples: bool = False,
    label_restriction: bool = True,
) -> tuple[int, dict[str, str]]:
    """Write the pseudo label of each of this process's ``rows`` under ``out``, scoring those
    with a ground-truth mask into ``metric``: the number scored and the skipped ids (bad
    images under ``skip_bad_samples``; without it a bad image stops the run, the labels
    written so far kept). ``label_restriction``: each image's prediction keeps background and
    its image-level classes only."""
    loader = DataLoader(
        TrainingImages(rows, num_classes),
        batch_size=None,
        collate_fn=as_is,
        num_workers=num_workers,
    )
    items = progress(
        loader, desc="pseudo labels", total=len(rows), main_process=accelerator.is_main_process
    )
    scored, skipped = 0, {}
    for item in itertools.chain(items, [None]):
        if item is not None and "error" in item:
            if not skip_bad_samples:
                raise SystemExit(
                    f"{item['error']}\n(the pseudo labels written so far are "
                    "kept; pass --skip_bad_samples to leave bad images out)"
                )
            logger.warning("skipped bad sample %s", item["error"])
            skipped[item["id"]] = item["error"]
            continue
        if item is None:  # the CRF pool's last images
            done = stream.finish()
        else:
            allowed = item["classes"] if label_restriction else None
            done = stream.submit(item["rgb"], (item["id"], item["mask"]), allowed)
        for (sample_id, mask), _, labels in done:
            target = out / MASK_DIR / f"{sample_id}.png"
            target.parent.mkdir(parents=True, exist_ok=True)  # ids with folders (imagefolder)
            save_image_atomic(label_image(labels), target)
            if mask is not None:
                metric.update(labels, mask)
                scored += 1
    return scored, skipped


def check_output_ids(ids: list[str], folder: Path) -> None:
    """Every id names a file inside ``folder`` (``a/b`` folders included): an absolute id,
    ``..`` or an empty part would write elsewhere, and is refused naming the id, before any
    work."""
    for sample_id in ids:
        parts = Path(sample_id).parts
        if (
            not sample_id
            or Path(sample_id).is_absolute()
            or ".." in parts
            or "\\" in sample_id
            or "\0" in sample_id
        ):
            raise ValueError(
                f"sample id {sample_id!r}: would write outside {folder}; ids must "
                "be relative names without '..' (check the split list or the "
                "dataset's id column)"
            )


def write_voc_root(
    out: Path,
    rows: datasets.Dataset,
    split: str,
    source_images: Path | None,
    fmt: str,
    report: dict,
) -> None:
    """Make ``out`` a VOC root that ``load_voc`` reads: the split's id list, ``JPEGImages``
    linked to the source images, and with ``fmt == "datasets"`` an Arrow index of the pairs
    (its path goes into ``report``)."""
    lists = out / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    write_text_atomic(lists / f"{split}.txt", "\n".join(rows["id"]) + "\n")
    link = out / "JPEGImages"
    if source_images is not None and not link.exists():
        link.symlink_to(source_images.resolve(), target_is_directory=True)
    if fmt == "datasets":
        images = rows.cast_column("image", datasets.Image(decode=False))["image"]
        table = {
            "id": rows["id"],
            "labels": rows["labels"],
            "image": [{"path": im["path"], "bytes": im["bytes"]} for im in images],
            "mask": [{"path": str(out / MASK_DIR / f"{i}.png"), "bytes": None} for i in rows["id"]],
        }
        target = out / "pseudo_labels.arrow"
        target.unlink(missing_ok=True)
        cached_arrow(
            out,
            "pseudo_labels",
            lambda: datasets.Dataset.from_dict(table, features=features(class_names(rows))),
        )
        report["arrow"] = str(target)


if __name__ == "__main__":
    main()

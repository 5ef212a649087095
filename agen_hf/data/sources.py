"""Where a recipe's data comes from: one set of flags and one loader for every source, so that
training, evaluation, pseudo labels, figures and validation read the same datasets.

    --voc_root DIR                  PASCAL VOC 2012 (+SBD)            splits train_aug / val
    --coco_root DIR                 MS COCO 2014                      splits train2014 / val2014
    --train_dir DIR [--validation_dir DIR]   a folder of tagged images (imagefolder convention)
    --dataset_name ID_OR_DIR [--dataset_config_name NAME]   a Hub dataset or a local folder
                                    that ``datasets.load_dataset`` reads   splits train / validation
    --dataset synthetic             the embedded synthetic data    splits train / val
        [--synthetic_size N --synthetic_val_size N --synthetic_image_size PX --seed S]
        (the val split is drawn from ``seed + 1,000,003``: eval_voc.py given a training run's
        flags scores the very images that run validated on)

The evaluation split is read with the training split's classes, so both name them alike.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Sequence

import datasets

from .coco import load_coco
from .conform import add_column_arguments, column_mapping_from, conform
from .folder import load_folder
from .voc import _resolve_root, load_voc

logger = logging.getLogger(__name__)

SOURCES = ("voc", "coco", "folder", "hub", "synthetic")
DEFAULT_SPLITS = {
    "voc": ("train_aug", "val"),
    "coco": ("train2014", "val2014"),
    "hub": ("train", "validation"),
    "folder": ("train", "validation"),
    "synthetic": ("train", "val"),
}
# model-card metadata per source: (dataset_type, dataset_name, tag)
CARD = {
    "voc": ("pascal_voc", "PASCAL VOC 2012", "pascal-voc"),
    "coco": ("coco", "MS COCO 2014", "coco"),
    "synthetic": ("synthetic", "agen_hf synthetic", "synthetic"),
}


SYNTHETIC_VAL_SEED_OFFSET = 1_000_003


def add_synthetic_arguments(group, *, seed: bool = False) -> None:
    """The synthetic source's size flags (and ``--seed``, for a recipe that has none)."""
    from ..engine.arguments import at_least, non_negative, positive

    group.add_argument("--synthetic_size", type=positive, default=2000)
    group.add_argument("--synthetic_val_size", type=non_negative, default=200)
    group.add_argument("--synthetic_image_size", type=at_least(16), default=128)
    if seed:
        group.add_argument(
            "--seed",
            type=int,
            default=42,
            help="the training run's --seed: the synthetic splits are drawn from it",
        )


def add_data_arguments(group, *, synthetic: bool = False) -> None:
    """The flags above (``--dataset`` offers ``synthetic`` only when ``synthetic``), the column
    flags of :func:`agen_hf.data.conform.add_column_arguments`, and the splits."""
    group.add_argument(
        "--dataset",
        choices=SOURCES if synthetic else SOURCES[:-1],
        default=None,
        help="the source (default: the one whose flag is given"
        + (", else synthetic" if synthetic else "")
        + ")",
    )
    group.add_argument("--voc_root", help="local VOCdevkit/VOC2012 (with SegmentationClassAug)")
    group.add_argument(
        "--coco_root",
        help="local MS COCO 2014 root: train2014/, val2014/ and "
        "annotations/instances_*2014.json (or SegmentationClass/<split>/ PNGs)",
    )
    group.add_argument(
        "--train_dir",
        help="a folder of images with metadata.jsonl/.csv naming "
        "each image's classes (the datasets imagefolder convention)",
    )
    group.add_argument(
        "--validation_dir",
        help="with --train_dir: a folder of images with "
        "masks (mask_file_name in its metadata) to score",
    )
    group.add_argument(
        "--dataset_name",
        help="a Hub dataset id, or a local folder that "
        "datasets.load_dataset reads (image/pixel_values, annotation/label and "
        "labels/tags columns are recognised; map others with the column flags)",
    )
    group.add_argument("--dataset_config_name", help="the --dataset_name configuration")
    add_column_arguments(group)
    group.add_argument(
        "--train_split",
        default=None,
        help="default: train_aug (VOC), train2014 (COCO), train (Hub)",
    )
    group.add_argument(
        "--eval_split", default=None, help="default: val (VOC), val2014 (COCO), validation (Hub)"
    )


def resolve_source(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser | None = None,
    default: str | None = None,
) -> str:
    """The source the flags name (``args.dataset`` set, ``args.train_split``/``eval_split``
    filled with its defaults); a parser error when none or two are named."""
    named = [
        s
        for s, flags in (
            ("voc", ("voc_root",)),
            ("coco", ("coco_root",)),
            ("folder", ("train_dir", "validation_dir")),
            ("hub", ("dataset_name",)),
        )
        if any(getattr(args, f, None) for f in flags)
    ]

    def fail(message: str):
        if parser is not None:
            parser.error(message)
        raise ValueError(message)

    source = args.dataset
    if source is None:
        if len(named) > 1:
            fail(f"give one data source, not {', '.join(named)}")
        source = named[0] if named else default
    if source is None:
        fail("give the data: --voc_root, --coco_root, --train_dir or --dataset_name")
    if source == "hub" and _is_voc_root(args.dataset_name):
        logger.info("--dataset_name %s is a VOC root: read as --voc_root", args.dataset_name)
        source = "voc"
    flag = {
        "voc": ("voc_root", "dataset_name"),
        "coco": ("coco_root",),
        "folder": ("train_dir", "validation_dir"),
        "hub": ("dataset_name",),
    }.get(source, ())
    if flag and not any(getattr(args, f, None) for f in flag):
        fail(f"--dataset {source} needs --{flag[0]}")
    args.dataset = source
    train, evaluation = DEFAULT_SPLITS[source]
    args.train_split = args.train_split or train
    args.eval_split = args.eval_split or evaluation
    return source


def load_split(
    args: argparse.Namespace,
    split: str,
    *,
    role: str = "train",
    class_names_: Sequence[str] | None = None,
    require_foreground: bool = True,
) -> datasets.Dataset | None:
    """One split of ``args``'s source (:func:`resolve_source` first). ``role`` "eval" reads a
    folder source's ``--validation_dir`` (None when there is none); ``class_names_`` names
    the classes when the data does not (the training split's, for evaluation)."""
    skip = getattr(args, "skip_bad_samples", False)
    mapping = column_mapping_from(args.image_column, args.mask_column, args.labels_column)
    names = args.class_names or class_names_
    source = args.dataset
    if source == "voc":
        return load_voc(
            args.voc_root or args.dataset_name,
            split,
            skip_bad_samples=skip,
            labels_file=getattr(args, "labels_file", None),
            column_mapping=mapping,
            require_foreground=require_foreground,
        )
    if source == "coco":
        return load_coco(args.coco_root, split, skip_bad_samples=skip)
    if source == "folder":
        folder = args.train_dir if role == "train" else args.validation_dir
        if folder is None and role == "train":
            raise ValueError("the training images: give --train_dir FOLDER")
        if folder is None:
            return None
        return load_folder(
            folder,
            labels_column=args.labels_column,
            class_names=names,
            require_foreground=require_foreground,
        )
    if source == "hub":
        return load_hub(
            args.dataset_name,
            split,
            config_name=args.dataset_config_name,
            column_mapping=mapping,
            class_names=names,
            require_foreground=require_foreground,
        )
    if source == "synthetic":
        from .synthetic import make_synthetic

        if role == "train":
            return make_synthetic(
                args.synthetic_size, seed=args.seed, image_size=args.synthetic_image_size
            )
        return make_synthetic(
            args.synthetic_val_size,
            seed=args.seed + SYNTHETIC_VAL_SEED_OFFSET,
            image_size=args.synthetic_image_size,
        )
    raise ValueError(f"load_split: unknown source {source!r}")


def load_hub(
    name: str,
    split: str,
    *,
    config_name: str | None = None,
    column_mapping: dict[str, str] | None = None,
    class_names: Sequence[str] | None = None,
    require_foreground: bool = True,
) -> datasets.Dataset:
    """``split`` of a Hub dataset, of a local folder ``datasets.load_dataset`` reads, or of a
    dataset saved with ``save_to_disk`` (how a ``Dataset`` built in Python reaches the
    recipes), in the schema (:func:`agen_hf.data.conform`)."""
    path = Path(name)
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        saved = datasets.load_from_disk(str(path))
        if isinstance(saved, datasets.DatasetDict):
            if split not in saved:
                raise ValueError(
                    f"--dataset_name {name}: no split {split!r} (it has "
                    f"{sorted(saved)}); choose one with --train_split / "
                    "--eval_split"
                )
            saved = saved[split]
        return conform(
            saved,
            column_mapping,
            class_names=class_names,
            name=f"{name} [{split}]",
            require_foreground=require_foreground,
        )
    try:
        ds = datasets.load_dataset(
            name, **({"name": config_name} if config_name else {}), split=split
        )
    except ValueError as e:
        if "split" in str(e).lower() or "Unknown split" in str(e):
            raise ValueError(
                f"--dataset_name {name}: no split {split!r} ({e}); choose one "
                "with --train_split / --eval_split"
            ) from e
        raise
    except FileNotFoundError as e:
        raise FileNotFoundError(
            f"--dataset_name {name}: not found locally, and the Hub "
            f"could not be reached or has no such dataset ({e})"
        ) from e
    return conform(
        ds,
        column_mapping,
        class_names=class_names,
        name=f"{name} [{split}]",
        require_foreground=require_foreground,
    )


def _is_voc_root(path: str | None) -> bool:
    """Whether ``load_voc`` would find a VOC root at ``path`` (its own lookup)."""
    try:
        _resolve_root(Path(path or ""))
    except FileNotFoundError:
        return False
    return True


def scored(ds: datasets.Dataset | None, name: str) -> datasets.Dataset | None:
    """The rows of ``ds`` that have a mask to score against; None (and a log line) when there
    are none, so that a split without masks is reported as such, never as a NaN mIoU."""
    if ds is None:
        return None
    masks = ds.cast_column("mask", datasets.Image(decode=False))["mask"]
    keep = [i for i, m in enumerate(masks) if m is not None]
    if not keep:
        logger.warning("%s: no masks, so no mIoU (the images carry image-level labels only)", name)
        return None
    if len(keep) < len(ds):
        logger.warning(
            "%s: %d of %d images have no mask and are not scored",
            name,
            len(ds) - len(keep),
            len(ds),
        )
        return ds.select(keep)
    return ds


def card_dataset(args: argparse.Namespace) -> tuple[str, str, str, list[str]]:
    """(dataset_type, dataset_name, split, tags) of the model card's ``model-index``."""
    if args.dataset in CARD:
        kind, name, tag = CARD[args.dataset]
    elif args.dataset == "folder":
        folder = args.validation_dir or args.train_dir
        kind, name, tag = "imagefolder", Path(folder).name, "imagefolder"
    else:
        kind = name = args.dataset_name
        tag = args.dataset_name
    return kind, name, args.eval_split, [tag]

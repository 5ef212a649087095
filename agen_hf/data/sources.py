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

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import datasets

from ..arguments import at_least, flag, non_negative, positive
from .coco import load_coco
from .conform import column_mapping_from, conform
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


@dataclass
class DataArguments:
    """Where a recipe's data comes from (module docstring): one source's flags, the splits
    (filled with the source's :data:`DEFAULT_SPLITS` by the recipe), and the column flags that
    map a dataset in another schema to ours (:func:`agen_hf.data.conform.column_mapping_from`)."""

    group: ClassVar[str] = "data"
    dataset: str | None = flag(
        None,
        "the source (default: the one whose flag is given)",
        choices=SOURCES[:-1],
        run=True,
    )
    voc_root: str | None = flag(None, "local VOCdevkit/VOC2012 (with SegmentationClassAug)")
    coco_root: str | None = flag(
        None,
        "local MS COCO 2014 root: train2014/, val2014/ and annotations/instances_*2014.json "
        "(or SegmentationClass/<split>/ PNGs)",
    )
    train_dir: str | None = flag(
        None,
        "a folder of images with metadata.jsonl/.csv naming each image's classes (the "
        "datasets imagefolder convention)",
    )
    validation_dir: str | None = flag(
        None,
        "with --train_dir: a folder of images with masks (mask_file_name in its metadata) to score",
    )
    dataset_name: str | None = flag(
        None,
        "a Hub dataset id, or a local folder that datasets.load_dataset reads "
        "(image/pixel_values, annotation/label and labels/tags columns are recognised; map "
        "others with the column flags)",
    )
    dataset_config_name: str | None = flag(None, "the --dataset_name configuration")
    image_column: str | None = flag(None, "the dataset's image column")
    mask_column: str | None = flag(None, "the dataset's segmentation-map column")
    labels_column: str | None = flag(
        None,
        "the dataset's image-level classes: names, indices or a Sequence(ClassLabel) "
        "(derived from the masks when absent)",
    )
    class_names: list[str] | None = flag(
        None,
        "the foreground classes in label order (background is 0 and not listed); default: "
        "the dataset's own, or the tags found, sorted",
        nargs="+",
    )
    train_split: str | None = flag(
        None, "default: train_aug (VOC), train2014 (COCO), train (Hub)", run=True
    )
    eval_split: str | None = flag(None, "default: val (VOC), val2014 (COCO), validation (Hub)")

    def named_source(self) -> str | None:
        """The source the flags name: ``--dataset``, else the one whose flag is given (None
        when none is); a ValueError when two are, or when ``--dataset`` lacks its flag."""
        named = [
            s
            for s, flags in (
                ("voc", ("voc_root",)),
                ("coco", ("coco_root",)),
                ("folder", ("train_dir", "validation_dir")),
                ("hub", ("dataset_name",)),
            )
            if any(getattr(self, f) for f in flags)
        ]
        source = self.dataset
        if source is None:
            if len(named) > 1:
                raise ValueError(f"give one data source, not {', '.join(named)}")
            source = named[0] if named else None
        if source == "hub" and _is_voc_root(self.dataset_name):
            logger.info("--dataset_name %s is a VOC root: read as --voc_root", self.dataset_name)
            source = "voc"
        needed = {
            "voc": ("voc_root", "dataset_name"),
            "coco": ("coco_root",),
            "folder": ("train_dir", "validation_dir"),
            "hub": ("dataset_name",),
        }.get(source, ())
        if needed and not any(getattr(self, f) for f in needed):
            raise ValueError(f"--dataset {source} needs --{needed[0]}")
        return source

    def resolved(self, default: str | None = None) -> "DataArguments":
        """A copy with the source chosen (``default`` when the flags name none) and its
        default splits filled in; a ValueError naming what is missing."""
        source = self.named_source() or default
        if source is None:
            raise ValueError(
                "give the data: --voc_root, --coco_root, --train_dir or --dataset_name"
            )
        train, evaluation = DEFAULT_SPLITS[source]
        return dataclasses.replace(
            self,
            dataset=source,
            train_split=self.train_split or train,
            eval_split=self.eval_split or evaluation,
        )

    def column_mapping(self) -> dict[str, str] | None:
        return column_mapping_from(self.image_column, self.mask_column, self.labels_column)


@dataclass
class SyntheticDataArguments(DataArguments):
    """:class:`DataArguments` and the embedded synthetic data (``--dataset synthetic``)."""

    dataset: str | None = flag(
        None,
        "the source (default: the one whose flag is given, else synthetic)",
        choices=SOURCES,
        run=True,
    )
    synthetic_size: int = flag(2000, type=positive)
    synthetic_val_size: int = flag(200, type=non_negative)
    synthetic_image_size: int = flag(128, type=at_least(16))


def load_split(
    data: DataArguments,
    split: str,
    *,
    role: str = "train",
    class_names_: Sequence[str] | None = None,
    require_foreground: bool = True,
    skip_bad_samples: bool = False,
    labels_file: str | None = None,
    seed: int = 42,
) -> datasets.Dataset | None:
    """One split of ``data``'s source (:meth:`DataArguments.resolved` first). ``role`` "eval"
    reads a folder source's ``--validation_dir`` (None when there is none); ``class_names_``
    names the classes when the data does not (the training split's, for evaluation);
    ``labels_file``: VOC's image-level labels of ids without a mask; ``seed``: the synthetic
    data's (the training run's ``--seed``; its val split is drawn from ``seed +
    SYNTHETIC_VAL_SEED_OFFSET``)."""
    mapping = data.column_mapping()
    names = data.class_names or class_names_
    source = data.dataset
    if source == "voc":
        return load_voc(
            data.voc_root or data.dataset_name,
            split,
            skip_bad_samples=skip_bad_samples,
            labels_file=labels_file,
            column_mapping=mapping,
            require_foreground=require_foreground,
        )
    if source == "coco":
        return load_coco(data.coco_root, split, skip_bad_samples=skip_bad_samples)
    if source == "folder":
        folder = data.train_dir if role == "train" else data.validation_dir
        if folder is None and role == "train":
            raise ValueError("the training images: give --train_dir FOLDER")
        if folder is None:
            return None
        return load_folder(
            folder,
            labels_column=data.labels_column,
            class_names=names,
            require_foreground=require_foreground,
        )
    if source == "hub":
        return load_hub(
            data.dataset_name,
            split,
            config_name=data.dataset_config_name,
            column_mapping=mapping,
            class_names=names,
            require_foreground=require_foreground,
        )
    if source == "synthetic":
        from .synthetic import make_synthetic

        if role == "train":
            return make_synthetic(
                data.synthetic_size, seed=seed, image_size=data.synthetic_image_size
            )
        return make_synthetic(
            data.synthetic_val_size,
            seed=seed + SYNTHETIC_VAL_SEED_OFFSET,
            image_size=data.synthetic_image_size,
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


def with_masks(ds: datasets.Dataset | None, name: str) -> datasets.Dataset | None:
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


def card_dataset(data: DataArguments) -> tuple[str, str, str, list[str]]:
    """(dataset_type, dataset_name, split, tags) of the model card's ``model-index``."""
    if data.dataset in CARD:
        kind, name, tag = CARD[data.dataset]
    elif data.dataset == "folder":
        folder = data.validation_dir or data.train_dir
        kind, name, tag = "imagefolder", Path(folder).name, "imagefolder"
    else:
        kind = name = data.dataset_name
        tag = data.dataset_name
    return kind, name, data.eval_split, [tag]

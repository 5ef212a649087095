"""``python -m agen_hf.data.validate ROOT``: check every sample of a VOC root, a COCO 2014 root
or a folder of tagged images.

VOC: for each split list found (``ImageSets/Segmentation/{train,val,trainval,train_aug}.txt``, and
the packaged ``train_aug`` list when ``SegmentationClassAug/`` exists), every image and mask is
fully decoded and checked: missing files, unreadable or truncated files, non-RGB images
(RGBA, grayscale, 16-bit, CMYK...), masks of another size than their image, mask values
outside 0..20 and 255, samples without a foreground class. COCO (``annotations/`` or
``SegmentationClass/<split>/``) and image folders (``metadata.jsonl``/``.csv``) are loaded as
training loads them (so an unknown tag or a bad mask value is named at load), then every image
and mask is decoded and checked against the dataset's class count. Prints one line per problem
and a summary; exits 1 when anything is wrong, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import datasets

from ..progress import progress
from .decoding import DataError, decode_sample
from .schema import class_names, label_ids_from_mask
from .voc import NUM_CLASSES, _mask_dirs, _resolve_root, _split_ids, find_mask

SPLITS = ("train", "val", "trainval", "train_aug")


def check_sample(root: Path, sample_id: str, mask_dirs: list[Path]) -> list[str]:
    image = root / "JPEGImages" / f"{sample_id}.jpg"
    if not image.is_file():
        return [f"{image}: listed but the image is missing"]
    found = find_mask(mask_dirs, sample_id)
    mask = None if found is None else str(found)
    try:
        _, m = decode_sample(str(image), mask, NUM_CLASSES)
    except DataError as e:
        return [str(e)]
    if m is not None and not label_ids_from_mask(m, NUM_CLASSES):
        return [f"{mask}: no foreground class in this sample"]
    return []


def check_dataset(ds: datasets.Dataset, name: str, out) -> int:
    """Decode every image and mask of ``ds`` (the schema) and print each problem with its id;
    returns the number of problems."""
    num_classes = len(class_names(ds))
    raw = ds.cast_column("image", datasets.Image(decode=False)).cast_column(
        "mask", datasets.Image(decode=False)
    )

    def check(i: int) -> str | None:
        row = raw[i]
        try:
            decode_sample(row["image"], row["mask"], num_classes)
        except DataError as e:
            return f"id {row['id']}: {e}"
        return None

    with ThreadPoolExecutor(8) as pool:
        bad = [
            p
            for p in progress(
                pool.map(check, range(len(raw))), desc=f"checking {name}", total=len(raw)
            )
            if p
        ]
    for p in bad:
        print(f"[{name}] {p}", file=out)
    print(f"{name}: {len(raw)} samples, {num_classes} classes, {len(bad)} problems", file=out)
    return len(bad)


def _load_other(root: Path):
    """(name, loader) pairs of a COCO root's splits, or of an image folder."""
    from .coco import SPLITS as COCO_SPLITS
    from .coco import load_coco
    from .folder import load_folder

    if (root / "annotations").is_dir() or (root / "SegmentationClass").is_dir():
        return [(s, lambda s=s: load_coco(root, s)) for s in COCO_SPLITS if (root / s).is_dir()]
    return [(root.name or str(root), lambda: load_folder(root))]


def validate(root: str | Path, splits: tuple[str, ...] = SPLITS, out=None) -> int:
    """Check ``root``; returns the number of problems found."""
    out = out or sys.stdout
    root = Path(root)
    try:
        root = _resolve_root(root)
    except FileNotFoundError:
        if not root.is_dir():
            raise
        problems = checked = 0
        for name, load in _load_other(root):
            try:
                ds = load()
            except (DataError, ValueError) as e:
                print(f"[{name}] {e}", file=out)
                problems += 1
                continue
            problems += check_dataset(ds, name, out)
            checked += len(ds)
        print(
            f"checked {checked} samples in {root}: "
            f"{'no problems' if not problems else f'{problems} problems'}",
            file=out,
        )
        return problems
    problems = checked = 0
    for split in splits:
        listed = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listed.is_file() and not (
            split == "train_aug" and (root / "SegmentationClassAug").is_dir()
        ):
            continue
        ids, list_name = _split_ids(root, split)
        mask_dirs = _mask_dirs(root, split)
        with ThreadPoolExecutor(8) as pool:
            results = list(
                progress(
                    pool.map(lambda i: check_sample(root, i, mask_dirs), ids),
                    desc=f"checking {split}",
                    total=len(ids),
                )
            )
        bad = [p for r in results for p in r]
        for p in bad:
            print(f"[{split}] {p}", file=out)
        print(f"{split}: {len(ids)} samples from {list_name}, {len(bad)} problems", file=out)
        problems += len(bad)
        checked += len(ids)
    print(
        f"checked {checked} samples in {root}: "
        f"{'no problems' if not problems else f'{problems} problems'}",
        file=out,
    )
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m agen_hf.data.validate", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "root",
        help="VOCdevkit/VOC2012 (or a folder holding it), a COCO 2014 "
        "root, or a folder of tagged images",
    )
    parser.add_argument("--splits", nargs="+", default=list(SPLITS), choices=SPLITS)
    args = parser.parse_args(argv)
    try:
        problems = validate(args.root, tuple(args.splits))
    except FileNotFoundError as e:
        print(e, file=sys.stderr)
        return 2
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

"""``python -m agen_hf.data.validate ROOT``: check every sample of a VOC root.

For each split list found (``ImageSets/Segmentation/{train,val,trainval,train_aug}.txt``, and
the packaged ``train_aug`` list when ``SegmentationClassAug/`` exists), every image and mask is
fully decoded and checked: missing files, unreadable or truncated files, non-RGB images
(RGBA, grayscale, 16-bit, CMYK...), masks of another size than their image, mask values
outside 0..20 and 255, samples without a foreground class. Prints one line per problem and a
summary; exits 1 when anything is wrong, 0 otherwise.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..progress import progress
from .samples import VocDataError, decode_sample, labels_from_mask
from .voc import _mask_dirs, _resolve_root, _split_ids, find_mask

SPLITS = ("train", "val", "trainval", "train_aug")


def check_sample(root: Path, sample_id: str, mask_dirs: list[Path]) -> list[str]:
    image = root / "JPEGImages" / f"{sample_id}.jpg"
    if not image.is_file():
        return [f"{image}: listed but the image is missing"]
    found = find_mask(mask_dirs, sample_id)
    mask = None if found is None else str(found)
    try:
        _, m = decode_sample(str(image), mask)
    except VocDataError as e:
        return [str(e)]
    if m is not None and not any(labels_from_mask(m)):
        return [f"{mask}: no foreground class in this sample"]
    return []


def validate(root: str | Path, splits: tuple[str, ...] = SPLITS, out=None) -> int:
    """Check ``root``; returns the number of problems found."""
    out = out or sys.stdout
    root = _resolve_root(Path(root))
    problems = checked = 0
    for split in splits:
        listed = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not listed.is_file() and not (split == "train_aug" and
                                         (root / "SegmentationClassAug").is_dir()):
            continue
        ids, list_name = _split_ids(root, split)
        mask_dirs = _mask_dirs(root, split)
        with ThreadPoolExecutor(8) as pool:
            results = list(progress(pool.map(lambda i: check_sample(root, i, mask_dirs), ids),
                                    desc=f"checking {split}", total=len(ids)))
        bad = [p for r in results for p in r]
        for p in bad:
            print(f"[{split}] {p}", file=out)
        print(f"{split}: {len(ids)} samples from {list_name}, {len(bad)} problems", file=out)
        problems += len(bad)
        checked += len(ids)
    print(f"checked {checked} samples in {root}: "
          f"{'no problems' if not problems else f'{problems} problems'}", file=out)
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agen_hf.data.validate",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="VOCdevkit/VOC2012 (or a folder holding it)")
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

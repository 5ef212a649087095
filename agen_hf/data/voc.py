"""PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``) as a ``datasets.Dataset`` in the schema of
:mod:`agen_hf.data.schema`, with VOC's 20 classes (:data:`VOC_CLASS_NAMES`; mask value k + 1
is class k, 0 background, 255 ignore).

A local VOC root is indexed lazily: images are referenced by path and never decoded here (only
their headers are read, to check mode and size), masks are decoded once to derive the labels,
and the index is cached as Arrow so that a second load is a memory map.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import datasets

from ..labels import VOC_CLASS_NAMES
from ..progress import progress
from .cache import cached_arrow, default_cache_dir, files_key
from .conform import conform
from .decoding import (
    DataError,
    check_image_header,
    check_mask_size,
    decode_mask,
    describe,
    open_image,
)
from .schema import features, label_ids_from_mask

logger = logging.getLogger(__name__)

NUM_CLASSES = len(VOC_CLASS_NAMES)
_CACHE_VERSION = "3"  # 2: labels as Sequence(ClassLabel) class indices; 3: keyed on files
FEATURES = features(VOC_CLASS_NAMES)

DOWNLOAD_HELP = """\
PASCAL VOC 2012 was not found at {root!r}. agen_hf never downloads it; get it once and point
--voc_root (or load_voc's first argument) at it:
  1. VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/voc2012/
     -> extract; the root is VOCdevkit/VOC2012 (JPEGImages/, SegmentationClass/, ImageSets/).
  2. For train_aug: SegmentationClassAug.zip (the SBD masks converted to VOC PNGs, as used by
     PSA, SEAM and RRM) -> extract into the same root as SegmentationClassAug/.
A Hub dataset id works too when the machine is online."""


def packaged_train_aug_ids() -> list[str]:
    """The 10,582 ids of VOC 2012 + SBD ``train_aug``, shipped with the package."""
    text = resources.files("agen_hf.data").joinpath("train_aug.txt").read_text()
    return text.split()


def _resolve_root(root: Path) -> Path:
    if (root / "JPEGImages").is_dir():
        return root
    for candidate in (root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    raise FileNotFoundError(DOWNLOAD_HELP.format(root=str(root)))


def _split_ids(root: Path, split: str) -> tuple[list[str], str]:
    listed = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if listed.is_file():
        return listed.read_text().split(), str(listed)
    if split == "train_aug":
        return packaged_train_aug_ids(), "the packaged train_aug list"
    raise FileNotFoundError(
        f"{listed}: split list missing; VOC splits are train, val, trainval "
        "and train_aug (ImageSets/Segmentation/<split>.txt)"
    )


def _mask_dirs(root: Path, split: str) -> list[Path]:
    order = (
        ["SegmentationClassAug", "SegmentationClass"]
        if split == "train_aug"
        else ["SegmentationClass", "SegmentationClassAug"]
    )
    return [root / d for d in order if (root / d).is_dir()]


def find_mask(mask_dirs: list[Path], sample_id: str) -> Path | None:
    """The first ``<dir>/<id>.png`` that exists, in the order of ``mask_dirs``."""
    return next(
        (d / f"{sample_id}.png" for d in mask_dirs if (d / f"{sample_id}.png").is_file()), None
    )


def _read_labels_file(path: str | os.PathLike) -> dict[str, list[int]]:
    """id -> class indices, from JSON mapping ids to class indices 0..19 or to class names."""
    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(str(path), f"cannot read image-level labels ({e})") from None
    out = {}
    for key, classes in raw.items():
        ids = set()
        for c in classes:
            index = VOC_CLASS_NAMES.index(c) if isinstance(c, str) and c in VOC_CLASS_NAMES else c
            if (
                isinstance(index, bool)
                or not isinstance(index, int)
                or not 0 <= index < NUM_CLASSES
            ):
                raise DataError(str(path), f"id {key}: unknown class {c!r}")
            ids.add(index)
        out[key] = sorted(ids)
    return out


def _index_one(
    root: Path,
    sample_id: str,
    list_name: str,
    mask_dirs: list[Path],
    labels: dict[str, list[int]] | None,
    require_foreground: bool = True,
) -> dict:
    image_path = root / "JPEGImages" / f"{sample_id}.jpg"
    if not image_path.is_file():
        raise DataError(str(image_path), f"listed in {list_name} but the image is missing")
    img, _ = open_image(str(image_path), "image")
    with img:
        check_image_header(img, str(image_path))
        size = img.size
    mask_path = find_mask(mask_dirs, sample_id)
    if mask_path is not None:
        mask = decode_mask(str(mask_path), NUM_CLASSES)
        check_mask_size(mask, size, str(mask_path))
        hot = label_ids_from_mask(mask, NUM_CLASSES)
    elif labels is not None and sample_id in labels:
        hot = labels[sample_id]
    else:
        raise DataError(
            str(image_path), "no mask and no image-level label for this id (give labels_file=...)"
        )
    if require_foreground and not hot:
        raise DataError(
            str(mask_path or image_path),
            "no foreground class in this sample; weak supervision needs at least one",
        )
    return {
        "id": sample_id,
        "image": {"path": str(image_path), "bytes": None},
        "labels": hot,
        "mask": None if mask_path is None else {"path": str(mask_path), "bytes": None},
    }


def _fingerprint(
    root: Path, split: str, ids: list[str], labels_file, skip: bool, require_foreground: bool
) -> str:
    h = hashlib.sha1()
    parts = [
        _CACHE_VERSION,
        str(root.resolve()),
        split,
        str(skip),
        str(require_foreground),
        "\n".join(ids),
    ]
    # the files the index reads, by size and st_mtime_ns (an image rewritten in place, which
    # leaves its folder's time as it was, rebuilds the index), and each id's mask: the first
    # that exists in the split's order of mask folders
    parts.append(files_key(root / "JPEGImages", [f"{i}.jpg" for i in ids]))
    left = [f"{i}.png" for i in ids]
    for d in _mask_dirs(root, split):
        listed = set(os.listdir(d))
        parts.append(f"{d.name}:{files_key(d, [n for n in left if n in listed], listed)}")
        left = [n for n in left if n not in listed]
    if labels_file is not None:
        parts.append(Path(labels_file).read_bytes().hex())
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def build_voc_index(
    root: str | os.PathLike,
    split: str,
    *,
    skip_bad_samples: bool = False,
    labels_file: str | os.PathLike | None = None,
    require_foreground: bool = True,
    num_threads: int | None = None,
) -> datasets.Dataset:
    """Index a local VOC root without the cache (see :func:`load_voc`)."""
    root = _resolve_root(Path(root))
    ids, list_name = _split_ids(root, split)
    mask_dirs = _mask_dirs(root, split)
    labels = _read_labels_file(labels_file) if labels_file is not None else None

    def index(sample_id: str):
        try:
            return _index_one(root, sample_id, list_name, mask_dirs, labels, require_foreground)
        except DataError as e:
            return e

    with ThreadPoolExecutor(num_threads or min(8, (os.cpu_count() or 1) * 2)) as pool:
        rows = list(progress(pool.map(index, ids), desc=f"indexing VOC {split}", total=len(ids)))
    bad = [r for r in rows if isinstance(r, DataError)]
    if bad and not skip_bad_samples:
        more = f" (and {len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
        raise DataError(
            bad[0].path,
            f"{bad[0].problem}{more}; run `python -m "
            f"agen_hf.data.validate {root}` for a full report, or pass "
            "skip_bad_samples=True to skip them",
        ) from None
    for e in bad:
        logger.warning("skipped bad sample %s", e)
    if bad:
        logger.warning(
            "load_voc(%s, %r): skipped %d of %d samples", root, split, len(bad), len(rows)
        )
    good = [r for r in rows if not isinstance(r, DataError)]
    columns = {k: [r[k] for r in good] for k in FEATURES}
    ds = datasets.Dataset.from_dict(columns, features=FEATURES, split=split)
    return describe(ds, f"PASCAL VOC 2012 {split} from {root}", len(bad))


def load_voc(
    source: str | os.PathLike | datasets.Dataset,
    split: str = "train_aug",
    *,
    skip_bad_samples: bool = False,
    labels_file: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    column_mapping: dict[str, str] | None = None,
    require_foreground: bool = True,
) -> datasets.Dataset:
    """VOC 2012 split as a ``datasets.Dataset`` with the schema above.

    source: a local VOC root (``VOCdevkit/VOC2012`` or a folder holding it), a Hub dataset id,
        or a ``datasets.Dataset`` already in (or mapped to) the schema.
    split: ``train``, ``val``, ``trainval`` or ``train_aug`` (10,582 ids, SBD masks from
        ``SegmentationClassAug/``; the id list is packaged, or read from
        ``ImageSets/Segmentation/train_aug.txt`` when the root has one).
    skip_bad_samples: skip (and log, with a count) samples that fail the checks instead of
        raising :class:`DataError` naming the first file at fault.
    labels_file: JSON id -> classes (indices 0..19 or VOC names), used for ids without a mask.
    cache_dir: where the Arrow index is cached (default: the datasets cache, ``agen_hf/``).
    require_foreground: a sample whose mask has no foreground is bad (weak supervision needs
        a class); False for fully supervised training on pseudo labels, where an
        all-background mask is a valid target.
    column_mapping: for Hub datasets and foreign ``Dataset`` objects, ``{their column: ours}``,
        e.g. ``{"img": "image", "label": "mask"}``; ``labels`` is derived from ``mask`` when
        absent, and ``id`` from the row index (:func:`agen_hf.data.conform`, with VOC's class
        names unless the dataset names its own).
    """
    if isinstance(source, datasets.Dataset):
        return conform(
            source,
            column_mapping,
            default_class_names=VOC_CLASS_NAMES,
            name="the given Dataset",
            require_foreground=require_foreground,
        )
    path = Path(source)
    if not path.exists() and not _looks_like_hub_id(str(source)):
        raise FileNotFoundError(DOWNLOAD_HELP.format(root=str(source)))
    if not path.exists():
        try:
            hub = datasets.load_dataset(str(source), split=split)
        except Exception as e:  # offline, missing, private: one clear message
            raise FileNotFoundError(
                DOWNLOAD_HELP.format(root=str(source)) + f"\nLoading it from the Hub failed: {e}"
            ) from e
        return conform(
            hub,
            column_mapping,
            default_class_names=VOC_CLASS_NAMES,
            name=str(source),
            require_foreground=require_foreground,
        )

    root = _resolve_root(path)
    ids, _ = _split_ids(root, split)
    key = _fingerprint(root, split, ids, labels_file, skip_bad_samples, require_foreground)
    return cached_arrow(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        f"voc-{split}-{key}",
        lambda: build_voc_index(
            root,
            split,
            skip_bad_samples=skip_bad_samples,
            labels_file=labels_file,
            require_foreground=require_foreground,
        ),
    )


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) <= 2 and all(parts) and not text.startswith((".", "~"))

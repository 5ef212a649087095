"""PASCAL VOC 2012 (+ SBD ``SegmentationClassAug``) as a ``datasets.Dataset``.

Schema of every dataset agen_hf reads (VOC, Hub, synthetic):

    id      string
    image   datasets.Image   RGB
    labels  list of 20 uint8 image-level multi-hot labels (class c <-> mask value c + 1)
    mask    datasets.Image   class-index PNG (0 background, 1..20, 255 ignore) or None

A local VOC root is indexed lazily: images are referenced by path and never decoded here (only
their headers are read, to check mode and size), masks are decoded once to derive the labels,
and the index is cached as Arrow so that a second load is a memory map.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path

import datasets
import numpy as np
from datasets.arrow_writer import ArrowWriter

from ..progress import progress
from .samples import (NUM_CLASSES, VocDataError, check_image_header, check_mask_size,
                      decode_mask, labels_from_mask, open_image)

logger = logging.getLogger(__name__)

_CACHE_VERSION = "1"
FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "image": datasets.Image(),
    "labels": datasets.Sequence(datasets.Value("uint8"), length=NUM_CLASSES),
    "mask": datasets.Image(),
})

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
    raise FileNotFoundError(f"{listed}: split list missing; VOC splits are train, val, trainval "
                            "and train_aug (ImageSets/Segmentation/<split>.txt)")


def _mask_dirs(root: Path, split: str) -> list[Path]:
    order = ["SegmentationClassAug", "SegmentationClass"] if split == "train_aug" else [
        "SegmentationClass", "SegmentationClassAug"]
    return [root / d for d in order if (root / d).is_dir()]


def find_mask(mask_dirs: list[Path], sample_id: str) -> Path | None:
    """The first ``<dir>/<id>.png`` that exists, in the order of ``mask_dirs``."""
    return next((d / f"{sample_id}.png" for d in mask_dirs if (d / f"{sample_id}.png").is_file()),
                None)


def _read_labels_file(path: str | os.PathLike) -> dict[str, list[int]]:
    """id -> multi-hot, from JSON mapping ids to class indices 0..19 or to class names."""
    from ..configuration_agen import VOC_CLASSES

    try:
        raw = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise VocDataError(str(path), f"cannot read image-level labels ({e})") from None
    out = {}
    for key, classes in raw.items():
        hot = [0] * NUM_CLASSES
        for c in classes:
            index = VOC_CLASSES.index(c) - 1 if isinstance(c, str) and c in VOC_CLASSES else c
            if not isinstance(index, int) or not 0 <= index < NUM_CLASSES:
                raise VocDataError(str(path), f"id {key}: unknown class {c!r}")
            hot[index] = 1
        out[key] = hot
    return out


def _index_one(root: Path, sample_id: str, list_name: str, mask_dirs: list[Path],
               labels: dict[str, list[int]] | None, require_foreground: bool = True) -> dict:
    image_path = root / "JPEGImages" / f"{sample_id}.jpg"
    if not image_path.is_file():
        raise VocDataError(str(image_path), f"listed in {list_name} but the image is missing")
    img, _ = open_image(str(image_path), "image")
    with img:
        check_image_header(img, str(image_path))
        size = img.size
    mask_path = find_mask(mask_dirs, sample_id)
    if mask_path is not None:
        mask = decode_mask(str(mask_path))
        check_mask_size(mask, size, str(mask_path))
        hot = labels_from_mask(mask)
    elif labels is not None and sample_id in labels:
        hot = labels[sample_id]
    else:
        raise VocDataError(str(image_path), "no mask and no image-level label for this id "
                                            "(give labels_file=...)")
    if require_foreground and not any(hot):
        raise VocDataError(str(mask_path or image_path), "no foreground class in this sample; "
                                                         "weak supervision needs at least one")
    return {"id": sample_id, "image": {"path": str(image_path), "bytes": None}, "labels": hot,
            "mask": None if mask_path is None else {"path": str(mask_path), "bytes": None}}


def _fingerprint(root: Path, split: str, ids: list[str], labels_file, skip: bool,
                 require_foreground: bool) -> str:
    h = hashlib.sha1()
    parts = [_CACHE_VERSION, str(root.resolve()), split, str(skip), str(require_foreground),
             "\n".join(ids)]
    for d in ["JPEGImages", "SegmentationClass", "SegmentationClassAug"]:
        p = root / d
        parts.append(f"{d}:{p.stat().st_mtime_ns if p.is_dir() else '-'}")
    if labels_file is not None:
        parts.append(Path(labels_file).read_bytes().hex())
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "agen_hf"


def build_voc_index(root: str | os.PathLike, split: str, *, skip_bad_samples: bool = False,
                    labels_file: str | os.PathLike | None = None,
                    require_foreground: bool = True,
                    num_threads: int | None = None) -> datasets.Dataset:
    """Index a local VOC root without the cache (see :func:`load_voc`)."""
    root = _resolve_root(Path(root))
    ids, list_name = _split_ids(root, split)
    mask_dirs = _mask_dirs(root, split)
    labels = _read_labels_file(labels_file) if labels_file is not None else None

    def index(sample_id: str):
        try:
            return _index_one(root, sample_id, list_name, mask_dirs, labels,
                              require_foreground)
        except VocDataError as e:
            return e

    with ThreadPoolExecutor(num_threads or min(8, (os.cpu_count() or 1) * 2)) as pool:
        rows = list(progress(pool.map(index, ids), desc=f"indexing VOC {split}",
                             total=len(ids)))
    bad = [r for r in rows if isinstance(r, VocDataError)]
    if bad and not skip_bad_samples:
        more = f" (and {len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
        raise VocDataError(bad[0].path, f"{bad[0].problem}{more}; run `python -m "
                           f"agen_hf.data.validate {root}` for a full report, or pass "
                           "skip_bad_samples=True to skip them") from None
    for e in bad:
        logger.warning("skipped bad sample %s", e)
    if bad:
        logger.warning("load_voc(%s, %r): skipped %d of %d samples", root, split, len(bad),
                       len(rows))
    good = [r for r in rows if not isinstance(r, VocDataError)]
    columns = {k: [r[k] for r in good] for k in FEATURES}
    ds = datasets.Dataset.from_dict(columns, features=FEATURES, split=split)
    ds.info.description = f"PASCAL VOC 2012 {split} from {root}; skipped: {len(bad)}"
    return ds


def load_voc(source: str | os.PathLike | datasets.Dataset, split: str = "train_aug", *,
             skip_bad_samples: bool = False, labels_file: str | os.PathLike | None = None,
             cache_dir: str | os.PathLike | None = None,
             column_mapping: dict[str, str] | None = None,
             require_foreground: bool = True) -> datasets.Dataset:
    """VOC 2012 split as a ``datasets.Dataset`` with the schema above.

    source: a local VOC root (``VOCdevkit/VOC2012`` or a folder holding it), a Hub dataset id,
        or a ``datasets.Dataset`` already in (or mapped to) the schema.
    split: ``train``, ``val``, ``trainval`` or ``train_aug`` (10,582 ids, SBD masks from
        ``SegmentationClassAug/``; the id list is packaged, or read from
        ``ImageSets/Segmentation/train_aug.txt`` when the root has one).
    skip_bad_samples: skip (and log, with a count) samples that fail the checks instead of
        raising :class:`VocDataError` naming the first file at fault.
    labels_file: JSON id -> classes (indices 0..19 or VOC names), used for ids without a mask.
    cache_dir: where the Arrow index is cached (default: the datasets cache, ``agen_hf/``).
    require_foreground: a sample whose mask has no foreground is bad (weak supervision needs
        a class); False for fully supervised training on pseudo labels, where an
        all-background mask is a valid target.
    column_mapping: for Hub datasets and foreign ``Dataset`` objects, ``{their column: ours}``,
        e.g. ``{"img": "image", "label": "mask"}``; ``labels`` is derived from ``mask`` when
        absent, and ``id`` from the row index.
    """
    if isinstance(source, datasets.Dataset):
        return _conform(source, column_mapping, "the given Dataset")
    path = Path(source)
    if not path.exists() and not _looks_like_hub_id(str(source)):
        raise FileNotFoundError(DOWNLOAD_HELP.format(root=str(source)))
    if not path.exists():
        try:
            hub = datasets.load_dataset(str(source), split=split)
        except Exception as e:  # offline, missing, private: one clear message
            raise FileNotFoundError(DOWNLOAD_HELP.format(root=str(source)) +
                                    f"\nLoading it from the Hub failed: {e}") from e
        return _conform(hub, column_mapping, str(source))

    root = _resolve_root(path)
    ids, _ = _split_ids(root, split)
    key = _fingerprint(root, split, ids, labels_file, skip_bad_samples, require_foreground)
    return cached_arrow(
        Path(cache_dir) if cache_dir is not None else default_cache_dir(),
        f"voc-{split}-{key}",
        lambda: build_voc_index(root, split, skip_bad_samples=skip_bad_samples,
                                labels_file=labels_file,
                                require_foreground=require_foreground))


def cached_arrow(cache_dir: Path, name: str, build) -> datasets.Dataset:
    """``build()`` once, kept as ``cache_dir/name.arrow`` and memory-mapped from then on.

    File references (``{"path": ..., "bytes": None}``) stay references: nothing is embedded.
    The file is written to a temporary name and renamed, so a crash never leaves a half-written
    cache; an unwritable cache directory only costs the rebuild next time.
    """
    target = cache_dir / f"{name}.arrow"
    if target.is_file():
        return datasets.Dataset.from_file(str(target))
    ds = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".arrow", dir=cache_dir)
        os.close(fd)
        try:
            writer = ArrowWriter(features=ds.features, path=tmp, embed_local_files=False)
            writer.write_table(ds.data.table)
            writer.finalize()
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    except OSError as e:
        logger.warning("could not cache %s in %s (%s); using it from memory", name, cache_dir, e)
        return ds
    return datasets.Dataset.from_file(str(target))


def _looks_like_hub_id(text: str) -> bool:
    parts = text.split("/")
    return len(parts) <= 2 and all(parts) and not text.startswith((".", "~"))


# the names other segmentation datasets give our columns (the no_trainer example's and the
# Hub's: scene_parse_150 "annotation", segments/sidewalk "pixel_values" + "label"), tried in
# order when a column is missing and no mapping names it; an image column only
COMMON_NAMES = {"image": ("pixel_values", "img"),
                "mask": ("annotation", "label", "segmentation", "semantic_segmentation")}


def add_column_arguments(group) -> None:
    """``--image_column``, ``--mask_column``, ``--labels_column``: how a ``--dataset_name``
    in another schema maps to ours (:func:`column_mapping_from`)."""
    group.add_argument("--image_column", help="--dataset_name's image column")
    group.add_argument("--mask_column", help="--dataset_name's segmentation-map column")
    group.add_argument("--labels_column",
                       help="--dataset_name's 20 image-level multi-hot labels (derived from "
                            "the masks when absent)")


def column_mapping_from(image_column: str | None = None, mask_column: str | None = None,
                        labels_column: str | None = None) -> dict[str, str] | None:
    """``{their column: ours}`` from the recipes' ``--image_column`` / ``--mask_column`` /
    ``--labels_column`` flags (None when none is given)."""
    pairs = {their: ours for their, ours in ((image_column, "image"), (mask_column, "mask"),
                                             (labels_column, "labels")) if their}
    return pairs or None


def _recognise_columns(ds: datasets.Dataset) -> dict[str, str]:
    """Common names of image columns for ``image`` and ``mask`` when they are missing."""
    found = {}
    for ours, names in COMMON_NAMES.items():
        if ours in ds.column_names:
            continue
        for their in names:
            if their in ds.column_names and their not in found and \
                    isinstance(ds.features[their], datasets.Image):
                found[their] = ours
                break
    return found


def _conform(ds: datasets.Dataset, column_mapping: dict[str, str] | None,
             name: str) -> datasets.Dataset:
    """Rename columns (``column_mapping``, then the common names of :data:`COMMON_NAMES`),
    derive ``labels``/``id`` where missing, and check the schema."""
    if column_mapping:
        missing = [c for c in column_mapping if c not in ds.column_names]
        if missing:
            raise ValueError(f"{name}: column_mapping names columns {missing} that are not in "
                             f"{ds.column_names}")
        ds = ds.rename_columns(column_mapping)
    ds = ds.rename_columns(_recognise_columns(ds))
    if "image" not in ds.column_names:
        raise ValueError(f"{name}: no 'image' column (columns: {ds.column_names}); map yours "
                         "with --image_column NAME (column_mapping={'their_name': 'image'})")
    if "labels" not in ds.column_names:
        if "mask" not in ds.column_names:
            raise ValueError(f"{name}: needs a 'labels' (20 image-level multi-hot) or a 'mask' "
                             f"column to derive them from (columns: {ds.column_names})")
        ds = ds.map(lambda row: {"labels": labels_from_mask(np.asarray(row["mask"]))},
                    desc="labels from masks")
    if "id" not in ds.column_names:
        ds = ds.add_column("id", [str(i) for i in range(len(ds))])
    if "mask" not in ds.column_names:
        ds = ds.add_column("mask", [None] * len(ds))
    extra = [c for c in ds.column_names if c not in FEATURES]
    ds = ds.remove_columns(extra)
    try:
        return ds.cast(FEATURES)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: cannot be cast to the VOC schema {dict(FEATURES)}: {e}") from e

"""Any ``datasets.Dataset`` (a Hub dataset, a local folder ``load_dataset`` reads, one built in
Python) brought to the schema of :mod:`agen_hf.data.schema`, with its classes.

Where the classes come from, in order:
  * ``labels`` is ``Sequence(ClassLabel)`` (or a single ``ClassLabel``, e.g. imagefolder's
    ``label`` from sub-folder names): the feature's names;
  * ``labels`` lists class names (``["crack", "rust"]``; in a CSV a JSON list or names
    separated by ``;`` or ``,``): ``class_names`` when given (an unknown name is an error
    naming the row), otherwise every name found, sorted;
  * ``labels`` lists class indices 0..C-1, or is a fixed-length multi-hot vector:
    ``class_names`` (or ``default_class_names``, e.g. VOC's in :func:`agen_hf.data.load_voc`);
  * no ``labels`` column: derived from the masks, named by ``class_names`` (or ``class_k``).
Masks are checked at load: a value outside 0..C and 255 is an error naming the row's id and the
value. Rows without any class and without a mask are left out (weak supervision needs a class),
and the log says how many.
"""

from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

import datasets
import numpy as np

from ..labels import IGNORE_INDEX, check_class_names
from ..progress import progress
from .decoding import DataError, decode_mask
from .schema import features

logger = logging.getLogger(__name__)

# the names other datasets give our columns (the no_trainer example's and the Hub's:
# scene_parse_150 "annotation", segments/sidewalk "pixel_values" + "label"), tried in order
# when a column is missing and no mapping names it; image columns for image and mask
COMMON_NAMES = {
    "image": ("pixel_values", "img"),
    "mask": ("annotation", "label", "segmentation", "semantic_segmentation"),
}
# image-level classes: any tags/classes column, and a ClassLabel "label" (imagefolder's
# sub-folder names; a plain integer "label" is too ambiguous to guess)
COMMON_LABEL_NAMES = ("tags", "classes", "label")


def column_mapping_from(
    image_column: str | None = None,
    mask_column: str | None = None,
    labels_column: str | None = None,
) -> dict[str, str] | None:
    """``{their column: ours}`` from the recipes' ``--image_column`` / ``--mask_column`` /
    ``--labels_column`` flags (None when none is given)."""
    pairs = {
        their: ours
        for their, ours in (
            (image_column, "image"),
            (mask_column, "mask"),
            (labels_column, "labels"),
        )
        if their
    }
    return pairs or None


def _recognise_columns(ds: datasets.Dataset) -> dict[str, str]:
    found = {}
    for ours, names in COMMON_NAMES.items():
        if ours in ds.column_names:
            continue
        for their in names:
            if (
                their in ds.column_names
                and their not in found
                and isinstance(ds.features[their], datasets.Image)
            ):
                found[their] = ours
                break
    if "labels" not in ds.column_names:
        for their in COMMON_LABEL_NAMES:
            feature = ds.features.get(their)
            if (
                their in found
                or feature is None
                or isinstance(feature, datasets.Image)
                or their == "label"
                and not isinstance(feature, datasets.ClassLabel)
            ):
                continue
            found[their] = "labels"
            break
    return found


def _inner(feature):
    """The element feature of a sequence feature (``Sequence``, ``List`` or ``[x]``)."""
    if isinstance(feature, list):
        return feature[0] if feature else None
    return getattr(feature, "feature", None)


def _length(feature) -> int:
    return getattr(feature, "length", -1)


def _is_text(feature) -> bool:
    return isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")


def _split_names(value) -> list:
    """A CSV cell's names: a JSON list, or names separated by ';' or ','."""
    if value is None:
        return []
    if not isinstance(value, str):
        return list(value)
    text = value.strip()
    if text.startswith("["):
        try:
            return list(json.loads(text))
        except ValueError:
            pass
    sep = ";" if ";" in text else ","
    return [t.strip() for t in text.split(sep) if t.strip()]


def _label_ids(
    ds: datasets.Dataset, names: Sequence[str] | None, default: Sequence[str] | None, name: str
) -> tuple[list[list[int]] | None, tuple[str, ...] | None]:
    """Each row's class indices and the class names, from whatever ``labels`` holds:
    ``names`` given by the user must match the dataset's own; ``default`` applies only where
    the dataset names none."""
    if "labels" not in ds.column_names:
        names = names if names is not None else default
        return None, None if names is None else check_class_names(names)
    feature = ds.features["labels"]
    ids = ds["id"] if "id" in ds.column_names else [str(i) for i in range(len(ds))]
    column = ds["labels"]
    inner = _inner(feature)
    if isinstance(feature, datasets.ClassLabel) or isinstance(inner, datasets.ClassLabel):
        own = tuple((feature if isinstance(feature, datasets.ClassLabel) else inner).names)
        if names is not None and tuple(names) != own:
            raise ValueError(
                f"{name}: its labels name the classes {list(own)}, but "
                f"--class_names gives {list(names)}"
            )
        rows = [[v] if isinstance(feature, datasets.ClassLabel) else list(v) for v in column]
        return rows, check_class_names(own, f"{name}: labels")
    names = names if names is not None else default
    if _is_text(feature) or _is_text(inner):
        tags = [_split_names(v) for v in column]
        found = sorted({t for row in tags for t in row})
        names = check_class_names(names if names is not None else found, f"{name}: labels")
        index = {n: k for k, n in enumerate(names)}
        rows = []
        for sid, row in zip(ids, tags):
            unknown = [t for t in row if t not in index]
            if unknown:
                raise ValueError(
                    f"{name}: id {sid}: unknown class {unknown[0]!r}; the classes are {list(names)}"
                )
            rows.append(sorted({index[t] for t in row}))
        return rows, names
    if isinstance(inner, datasets.Value) and _length(feature) > 0:  # a multi-hot vector
        size = _length(feature)
        if names is None or len(names) != size:
            raise ValueError(
                f"{name}: 'labels' is a multi-hot vector of {size} classes; give "
                f"their names with --class_names (class_names=[...])"
            )
        return [np.flatnonzero(np.asarray(v)).tolist() for v in column], check_class_names(names)
    if isinstance(inner, datasets.Value) or isinstance(feature, datasets.Value):
        if names is None:
            raise ValueError(
                f"{name}: 'labels' holds class indices; give the classes' names "
                "with --class_names (class_names=[...])"
            )
        names = check_class_names(names)
        rows = []
        for sid, v in zip(ids, column):
            row = [v] if isinstance(feature, datasets.Value) else list(v)
            bad = [c for c in row if not 0 <= int(c) < len(names)]
            if bad:
                raise ValueError(
                    f"{name}: id {sid}: class index {bad[0]} outside 0..{len(names) - 1}"
                )
            rows.append(sorted({int(c) for c in row}))
        return rows, names
    raise ValueError(
        f"{name}: cannot read image-level classes from 'labels' ({feature!r}); "
        "expected class names, indices or a Sequence(ClassLabel)"
    )


def _mask_classes(
    ds: datasets.Dataset, num_classes: int | None, name: str
) -> list[list[int] | None]:
    """Decode every mask once: its classes, checked against ``num_classes``; an error naming
    the row's id and file on a bad value (or an unreadable mask)."""
    masks = ds.cast_column("mask", datasets.Image(decode=False))["mask"]
    ids = ds["id"]

    def one(i: int):
        if masks[i] is None:
            return None
        try:
            m = decode_mask(masks[i], num_classes)
        except DataError as e:
            raise DataError(e.path, f"id {ids[i]} of {name}: {e.problem}") from None
        values = np.unique(m)
        return values[(values != 0) & (values != IGNORE_INDEX)].astype(np.int64).tolist()

    with ThreadPoolExecutor(4) as pool:
        return list(
            progress(pool.map(one, range(len(ds))), desc=f"checking {name}'s masks", total=len(ds))
        )


def conform(
    ds: datasets.Dataset,
    column_mapping: dict[str, str] | None = None,
    *,
    class_names: Sequence[str] | None = None,
    default_class_names: Sequence[str] | None = None,
    name: str = "the dataset",
    require_foreground: bool = True,
) -> datasets.Dataset:
    """``ds`` in the schema, its classes in the ``labels`` feature (see the module's text).

    column_mapping: ``{their column: ours}``, e.g. ``{"img": "image", "tags": "labels"}``;
        the common names of :data:`COMMON_NAMES` are recognised without one.
    class_names: the foreground classes in label order, when ``ds`` does not name them (if it
        does, they must agree).
    default_class_names: the names when neither ``ds`` nor ``class_names`` gives them (e.g.
        VOC's for :func:`agen_hf.data.load_voc`).
    require_foreground: leave out (and log) rows with no class and no mask.
    """
    if column_mapping:
        missing = [c for c in column_mapping if c not in ds.column_names]
        if missing:
            raise ValueError(
                f"{name}: column_mapping names columns {missing} that are not in {ds.column_names}"
            )
        ds = ds.rename_columns(column_mapping)
    ds = ds.rename_columns(_recognise_columns(ds))
    if "image" not in ds.column_names:
        raise ValueError(
            f"{name}: no 'image' column (columns: {ds.column_names}); map yours "
            "with --image_column NAME (column_mapping={'their_name': 'image'})"
        )
    if "labels" not in ds.column_names and "mask" not in ds.column_names:
        raise ValueError(
            f"{name}: needs a 'labels' column (image-level classes) or a 'mask' "
            f"column to derive them from (columns: {ds.column_names}); name "
            "yours with --labels_column"
        )
    if "id" not in ds.column_names:
        ds = ds.add_column("id", [str(i) for i in range(len(ds))])
    rows, names = _label_ids(ds, class_names, default_class_names, name)
    if "mask" in ds.column_names:
        found = _mask_classes(ds, None if names is None else len(names), name)
        if names is None:
            top = max((max(f) for f in found if f), default=0)
            names = tuple(f"class_{k}" for k in range(1, max(top, 1) + 1))
            logger.warning(
                "%s: no class names; its masks hold classes 1..%d, named %s..%s "
                "(give --class_names)",
                name,
                top,
                names[0],
                names[-1],
            )
        if rows is None:
            rows = [[] if f is None else [v - 1 for v in f] for f in found]
        else:  # a class a mask shows is one the image has
            rows = [sorted(set(r) | {v - 1 for v in (f or [])}) for r, f in zip(rows, found)]
    else:
        ds = ds.add_column("mask", [None] * len(ds))
        found = [None] * len(ds)
    ds = ds.remove_columns([c for c in ds.column_names if c not in ("id", "image", "mask")])
    ds = ds.add_column("labels", rows)
    if require_foreground:
        empty = [i for i, (r, f) in enumerate(zip(rows, found)) if not r and f is None]
        if empty:
            logger.warning(
                "%s: %d of %d images have no class and no mask and are left out "
                "(weak supervision needs at least one), e.g. id %s",
                name,
                len(empty),
                len(ds),
                ds.select([empty[0]])["id"][0],
            )
            keep = sorted(set(range(len(ds))) - set(empty))
            ds = ds.select(keep)
    try:
        return ds.select_columns(["id", "image", "labels", "mask"]).cast(features(names))
    except (ValueError, TypeError) as e:
        raise ValueError(
            f"{name}: cannot be cast to the schema {dict(features(names))}: {e}"
        ) from e

"""The schema of every dataset agen_hf reads, and the classes it carries.

    id      string
    image   datasets.Image                       RGB
    labels  Sequence(ClassLabel(names=[...]))    the image's foreground classes k in 0..C-1
    mask    datasets.Image or None               class-index PNG: 0 background, k + 1 class k,
                                                 255 ignore

The dataset owns its classes: the ``names`` of the ``labels`` feature, foreground only
(:func:`class_names`). Background is index 0 of every mask and of the model's ``id2label``
(:func:`id2label_for`): a model trained on a dataset has ``num_labels = C + 1``.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import numpy as np

IGNORE_INDEX = 255
BACKGROUND = "background"
MAX_CLASSES = IGNORE_INDEX - 1  # mask values 1..C must stay below the ignore value


def check_class_names(names: Sequence[str], source: str = "class_names") -> tuple[str, ...]:
    """``names`` as a tuple, or a ValueError naming ``source`` when they cannot be a dataset's
    foreground classes (empty, duplicated, not strings, "background", more than 254)."""
    names = tuple(names)
    if not names:
        raise ValueError(f"{source}: no class names; a dataset needs at least one class")
    bad = [n for n in names if not isinstance(n, str) or not n.strip()]
    if bad:
        raise ValueError(f"{source}: class names must be non-empty strings, got {bad[:5]}")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"{source}: duplicated class names {dup}")
    if BACKGROUND in names:
        raise ValueError(
            f"{source}: {BACKGROUND!r} is index 0 of every mask, not a class of "
            "the labels; list the foreground classes only"
        )
    if len(names) > MAX_CLASSES:
        raise ValueError(
            f"{source}: {len(names)} classes; masks are 8-bit with 255 = ignore, "
            f"so at most {MAX_CLASSES}"
        )
    return names


def features(class_names: Sequence[str]) -> datasets.Features:
    """The schema above for a dataset of these foreground classes."""
    return datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "labels": datasets.Sequence(
                datasets.ClassLabel(names=list(check_class_names(class_names)))
            ),
            "mask": datasets.Image(),
        }
    )


def class_names(source: datasets.Dataset | datasets.Features) -> tuple[str, ...]:
    """The foreground class names a dataset in the schema carries in its ``labels`` feature."""
    feats = source.features if isinstance(source, datasets.Dataset) else source
    feature = feats.get("labels")
    inner = getattr(feature, "feature", None)
    if isinstance(feature, list) and feature:  # datasets' List(...) spelling of a sequence
        inner = feature[0]
    if not isinstance(inner, datasets.ClassLabel):
        raise ValueError(
            f"the dataset's 'labels' feature is {feature!r}, not a sequence of "
            "ClassLabel: load it with agen_hf.data (load_voc, load_coco, "
            "load_folder, conform) so that it names its classes"
        )
    return tuple(inner.names)


def id2label_for(names: Sequence[str]) -> dict[int, str]:
    """The model's ``id2label``: background at 0, foreground class k at k + 1."""
    return {0: BACKGROUND, **{k + 1: n for k, n in enumerate(names)}}


def label_ids_from_mask(mask: np.ndarray, num_classes: int) -> list[int]:
    """The foreground classes k (0..C-1, sorted) whose value k + 1 a class-index mask holds."""
    values = np.unique(mask)
    values = values[(values >= 1) & (values <= num_classes)]
    return (values.astype(np.int64) - 1).tolist()


def multi_hot(label_ids: Sequence[int], num_classes: int) -> np.ndarray:
    """(C,) float32 image-level target of eq. 11 from the class indices of ``labels``."""
    out = np.zeros(num_classes, dtype=np.float32)
    out[np.asarray(label_ids, dtype=np.int64)] = 1
    return out


FINE_TUNE_HINT = (
    "pass --ignore_mismatched_sizes to re-initialise the class layers for the dataset's classes"
)


def same_classes_or_raise(
    model_names: Sequence[str],
    data_names: Sequence[str],
    model: str,
    data: str,
    hint: str = FINE_TUNE_HINT,
) -> None:
    """A ValueError naming both lists (and what to do, ``hint``) when a model's foreground
    classes are not the dataset's, in order."""
    if tuple(model_names) != tuple(data_names):
        raise ValueError(
            f"{model} knows {len(model_names)} classes {list(model_names)}, but {data} has "
            f"{len(data_names)} classes {list(data_names)}; {hint}"
        )

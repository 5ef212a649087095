"""Class labels as every model and dataset of agen_hf numbers them: 0 is background, class k
of a dataset's C foreground classes is k + 1, 255 is ignored (unassigned, conflicting and
boundary pixels); VOC's 20 classes, the colours of a label map, and the checks that a model
and a dataset name the same classes. Nothing here needs the data layer."""

from __future__ import annotations

from typing import Sequence

IGNORE_INDEX = 255
BACKGROUND = "background"
MAX_CLASSES = IGNORE_INDEX - 1  # mask values 1..C must stay below the ignore value

VOC_CLASS_NAMES = (
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)
VOC_CLASSES = (BACKGROUND, *VOC_CLASS_NAMES)  # the 21 labels of a VOC model's id2label


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


def id2label_for(names: Sequence[str]) -> dict[int, str]:
    """The model's ``id2label``: background at 0, foreground class k at k + 1."""
    return {0: BACKGROUND, **{k + 1: n for k, n in enumerate(names)}}


def default_id2label(num_labels: int) -> dict[int, str]:
    """The names of a config built without any: VOC's for the paper's 21 labels (the paper
    trains on VOC), ``LABEL_i`` otherwise (transformers' convention). A model trained by the
    recipes always takes its names from the training dataset (:func:`id2label_for`)."""
    names = (
        VOC_CLASSES if num_labels == len(VOC_CLASSES) else [f"LABEL_{i}" for i in range(num_labels)]
    )
    return dict(enumerate(names))


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


def voc_palette() -> list[int]:
    """The 256-colour VOC palette (flat RGB list): class index i gets the bit-interleaved
    colour of the devkit's ``VOClabelcolormap``, 255 (ignore) is (224, 224, 192). Every index
    up to 254 has its own colour, so it serves any number of classes (COCO's 81 too)."""
    palette = []
    for index in range(256):
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= (c & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        palette += [r, g, b]
    return palette

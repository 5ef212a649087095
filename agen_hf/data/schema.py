"""The schema of every dataset agen_hf reads, and the classes it carries.

    id      string
    image   datasets.Image                       RGB
    labels  Sequence(ClassLabel(names=[...]))    the image's foreground classes k in 0..C-1
    mask    datasets.Image or None               class-index PNG: 0 background, k + 1 class k,
                                                 255 ignore

The dataset owns its classes: the ``names`` of the ``labels`` feature, foreground only
(:func:`class_names`). Background is index 0 of every mask and of the model's ``id2label``
(:func:`agen_hf.labels.id2label_for`): a model trained on a dataset has ``num_labels = C + 1``.
"""

from __future__ import annotations

from typing import Sequence

import datasets
import numpy as np

from ..labels import check_class_names


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

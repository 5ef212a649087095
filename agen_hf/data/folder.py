"""A user's own tagged images: a folder in the ``datasets`` imagefolder convention.

    photos/
      metadata.jsonl      {"file_name": "0001.jpg", "labels": ["crack", "rust"]}
      0001.jpg ...        (or metadata.csv: file_name,labels with "crack;rust")

An optional ``mask_file_name`` column names each image's class-index PNG (0 background, k + 1
the k-th class, 255 ignore), for a validation folder that is scored. Read by
``datasets.load_dataset("imagefolder")`` (so every layout it understands works, sub-folder
class names included) and brought to the schema by :func:`agen_hf.data.conform`: the classes
are ``class_names`` when given, otherwise every tag found, sorted. Images with an empty tag
list and no mask are left out of training, and the log says how many.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import datasets

from .conform import conform


def load_folder(
    directory: str | os.PathLike,
    *,
    labels_column: str | None = None,
    class_names: Sequence[str] | None = None,
    require_foreground: bool = True,
    cache_dir: str | os.PathLike | None = None,
) -> datasets.Dataset:
    """The images of ``directory`` (see above) in the schema; ``id`` is each image's path
    relative to the folder, without its suffix.

    labels_column: the metadata column that lists each image's classes (default: ``labels``,
        or ``tags``/``classes``/``label``).
    class_names: the classes in label order; a tag outside them is an error naming the image.
    """
    root = Path(directory)
    if not root.is_dir():
        raise FileNotFoundError(
            f"{root}: no such folder; expected images with a "
            "metadata.jsonl or metadata.csv naming each image's classes "
            "(the datasets imagefolder convention)"
        )
    try:
        ds = datasets.load_dataset(
            "imagefolder",
            data_dir=str(root),
            split="train",
            cache_dir=None if cache_dir is None else str(cache_dir),
        )
    except (ValueError, FileNotFoundError) as e:
        raise ValueError(f"{root}: cannot be read as an image folder ({e})") from e
    paths = ds.cast_column("image", datasets.Image(decode=False))["image"]
    ids = [
        str(Path(p["path"]).resolve().relative_to(root.resolve()).with_suffix("")) for p in paths
    ]
    if "id" not in ds.column_names:  # the metadata may name its own ids
        ds = ds.add_column("id", ids)
    mapping = {labels_column: "labels"} if labels_column and labels_column != "labels" else None
    return conform(
        ds, mapping, class_names=class_names, name=str(root), require_foreground=require_foreground
    )

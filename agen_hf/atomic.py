"""Files written whole or not at all: the one way every writer of this package (checkpoint
state, results, model folders, pseudo-label PNGs, predictions, figures, Arrow caches) replaces
a file, so that a kill at any moment leaves the old file or the new one, never a part-written
one."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Iterator

from PIL import Image


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary name beside ``path`` (``.tmp-<pid>-<name>``: processes writing the same file
    never share one) to write to; renamed to ``path`` when the block ends, removed when it
    raises. The folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """``path`` holds ``text``, written whole (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_image_atomic(image: Image.Image, path: str | os.PathLike, **save_kwargs) -> None:
    """``image`` saved to ``path`` whole (:func:`atomic_path`); the format follows the suffix
    (``.png``, ``.jpg``)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **save_kwargs)

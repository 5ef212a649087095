"""Arrow caches of dataset indexes: built once, memory-mapped from then on."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Iterable

import datasets
from datasets.arrow_writer import ArrowWriter

from ..atomic import atomic_path, write_text_atomic

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "agen_hf"


def cached_arrow(cache_dir: Path, name: str, build) -> datasets.Dataset:
    """``build()`` once, kept as ``cache_dir/name.arrow`` and memory-mapped from then on.

    File references (``{"path": ..., "bytes": None}``) stay references: nothing is embedded.
    The file is written to a temporary name and renamed, so a crash never leaves a half-written
    cache; an unwritable cache directory only costs the rebuild next time. The description
    (what the loader skipped: :func:`agen_hf.data.decoding.describe`) is kept beside it in
    ``name.txt`` (when it has one), written before the rename.
    """
    target = cache_dir / f"{name}.arrow"
    described = cache_dir / f"{name}.txt"
    if target.is_file():
        return _described(datasets.Dataset.from_file(str(target)), described)
    ds = build()
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        if ds.info.description:
            write_text_atomic(described, ds.info.description)
        with atomic_path(target) as tmp:
            writer = ArrowWriter(features=ds.features, path=str(tmp), embed_local_files=False)
            writer.write_table(ds.data.table)
            writer.finalize()
    except OSError as e:
        logger.warning("could not cache %s in %s (%s); using it from memory", name, cache_dir, e)
        return ds
    return _described(datasets.Dataset.from_file(str(target)), described)


def _described(ds: datasets.Dataset, described: Path) -> datasets.Dataset:
    if described.is_file():
        ds.info.description = described.read_text()
    return ds


def files_key(folder: Path, names: Iterable[str], listed: set[str] | None = None) -> str:
    """A digest of the size and modification time (``st_mtime_ns``) of each of ``names`` in
    ``folder`` (``-`` for one that is missing): it changes when a file is rewritten in place,
    added or removed, while no file is read (hashing VOC's contents at every load would be too
    slow; the stats of train_aug's 21,164 files take ~70 ms on a local disk). Put it in a
    cache's key so that an edited mask or image rebuilds the index. ``listed``: the folder's
    names when the caller has listed it already."""
    parts = []
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # no such folder: every file is missing
        return hashlib.sha1("\0".join(f"{n}:-" for n in names).encode()).hexdigest()
    try:
        present = set(os.listdir(fd)) if listed is None else listed
        for name in names:
            stamp = "-"
            if name in present or "/" in name:
                try:
                    st = os.stat(name, dir_fd=fd)
                    stamp = f"{st.st_size}:{st.st_mtime_ns}"
                except FileNotFoundError:
                    pass
            parts.append(f"{name}:{stamp}")
    finally:
        os.close(fd)
    return hashlib.sha1("\0".join(parts).encode()).hexdigest()

"""Arrow caches of dataset indexes: built once, memory-mapped from then on."""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path

import datasets
from datasets.arrow_writer import ArrowWriter

logger = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(datasets.config.HF_DATASETS_CACHE) / "agen_hf"


def cached_arrow(cache_dir: Path, name: str, build) -> datasets.Dataset:
    """``build()`` once, kept as ``cache_dir/name.arrow`` and memory-mapped from then on.

    File references (``{"path": ..., "bytes": None}``) stay references: nothing is embedded.
    The file is written to a temporary name and renamed, so a crash never leaves a half-written
    cache; an unwritable cache directory only costs the rebuild next time. The description
    (what the loader skipped: :func:`agen_hf.data.samples.describe`) is kept beside it in
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
            described.write_text(ds.info.description)
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
    return _described(datasets.Dataset.from_file(str(target)), described)


def _described(ds: datasets.Dataset, described: Path) -> datasets.Dataset:
    if described.is_file():
        ds.info.description = described.read_text()
    return ds

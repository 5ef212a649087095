"""Finding a file of a saved model, in a local folder or a Hub repo."""

from __future__ import annotations

import os
from pathlib import Path

from huggingface_hub import hf_hub_download
from huggingface_hub.errors import EntryNotFoundError


def find_file(name_or_path: str | os.PathLike, filename: str) -> str | None:
    """``filename`` in a local folder, or in a Hub repo (None when it has no such file)."""
    folder = Path(name_or_path)
    if folder.is_dir():
        path = folder / filename
        return str(path) if path.is_file() else None
    try:
        return hf_hub_download(str(name_or_path), filename)
    except EntryNotFoundError:
        return None

"""Progress bars for long work (training, validation, evaluation, prediction, pseudo labels,
dataset indexing and validation): tqdm on the main process only.

``AGEN_HF_PROGRESS_BARS`` chooses: ``on`` (the default) always draws them, ``auto`` only when
the output is a terminal (tqdm's ``disable=None``: a job whose log goes to a file gets none),
``off`` never.
"""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
ENV = "AGEN_HF_PROGRESS_BARS"
_DISABLE = {"on": False, "auto": None, "off": True}


def bars_disabled() -> bool | None:
    """tqdm's ``disable`` for the setting of ``AGEN_HF_PROGRESS_BARS``."""
    value = os.environ.get(ENV, "on").strip().lower()
    if value not in _DISABLE:
        raise ValueError(f"{ENV}={value!r}: expected one of {', '.join(_DISABLE)}")
    return _DISABLE[value]


def progress(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    total: int | None = None,
    main_process: bool = True,
    **kwargs,
) -> tqdm:
    """A tqdm bar over ``iterable`` (or a manual one with ``total``), drawn only on the main
    process and as ``AGEN_HF_PROGRESS_BARS`` says."""
    disable = True if not main_process else bars_disabled()
    return tqdm(iterable, desc=desc, total=total, disable=disable, dynamic_ncols=True, **kwargs)

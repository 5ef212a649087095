"""Atomic, rotating training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written into ``output_dir/.tmp-checkpoint-<step>`` and renamed to
``output_dir/checkpoint-<step>`` only once every process has finished writing, so a crash or a
SIGKILL mid-save leaves at most a temporary folder, never a half-written checkpoint; the last
complete one stays loadable. The model weights inside are safetensors (``model.safetensors``);
optimizer and RNG states are Accelerate's files; ``trainer_state.json`` holds our position.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from pathlib import Path
from typing import Callable

from accelerate import Accelerator

logger = logging.getLogger("agen_hf.train")

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoints, oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_checkpoint(output_dir: str | os.PathLike, which: str) -> Path:
    """``"latest"`` -> the newest complete checkpoint in ``output_dir``; else a path."""
    if which == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            raise FileNotFoundError(f"--resume_from_checkpoint latest: no complete checkpoint "
                                    f"in {output_dir}")
        return found[-1]
    path = Path(which)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"--resume_from_checkpoint {which}: not a complete checkpoint "
                                f"(no {STATE_FILE})")
    return path


def save_checkpoint(accelerator: Accelerator, output_dir: str | os.PathLike, step: int,
                    state: dict, keep_last: int | None = None,
                    model_files: Callable[[Path], None] | None = None) -> Path:
    """Save model, optimizer, RNG states and ``state`` as ``checkpoint-<step>``, atomically;
    keep only the newest ``keep_last`` checkpoints. ``model_files(folder)`` (main process)
    writes what makes the folder a loadable model beside ``model.safetensors``
    (``config.json``, ``preprocessor_config.json``)."""
    root = Path(output_dir)
    final, tmp = root / f"checkpoint-{step}", root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    if accelerator.is_main_process:
        if model_files is not None:
            model_files(tmp)
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        if keep_last:
            for old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete temporary folders left by an interrupted save; returns what was removed."""
    root = Path(output_dir)
    stale = [p for p in root.glob(".tmp-checkpoint-*")] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def start_output_dir(accelerator: Accelerator, output_dir: str | os.PathLike,
                     resume_from: str | None = None) -> dict:
    """Create ``output_dir`` (removing what an interrupted save left) and, with
    ``resume_from`` (``"latest"`` or a checkpoint folder), restore model, optimizer and RNG
    states from it. Returns the saved position (``trainer_state.json``), or {} for a fresh
    run."""
    root = Path(output_dir)
    if accelerator.is_main_process:
        root.mkdir(parents=True, exist_ok=True)
        for stale in remove_partial_checkpoints(root):
            logger.warning("removed %s, left by an interrupted checkpoint save", stale)
    accelerator.wait_for_everyone()
    if not resume_from:
        return {}
    path = resolve_checkpoint(root, resume_from)
    state = load_checkpoint(accelerator, path)
    logger.info("resumed from %s at step %d (epoch %d, batch %d)", path, state["global_step"],
                state["epoch"], state["batches_in_epoch"])
    return state

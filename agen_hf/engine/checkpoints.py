"""Atomic, rotating, verifiable training checkpoints on top of ``accelerator.save_state``.

A checkpoint is written into ``output_dir/.tmp-checkpoint-<step>``, every file fsynced, and
renamed to ``output_dir/checkpoint-<step>`` only once every process has finished writing, so a
crash or a SIGKILL mid-save leaves at most a temporary folder, never a half-written checkpoint.
``trainer_state.json``, written last, holds the loop's position, the run's fingerprint
(:func:`agen_hf.engine.run_folder.fingerprint`) and every file's size: a checkpoint whose files
do not match it (a truncated ``model.safetensors`` after a full disk or a node that died with a
dirty page cache) is *broken*, reported by path and passed over when resuming from ``latest``
/ ``auto``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import struct
from pathlib import Path
from typing import Callable

from accelerate import Accelerator

from .distributed import wait_for_main

logger = logging.getLogger("agen_hf.train")

STATE_FILE = "trainer_state.json"
_NAME = re.compile(r"^checkpoint-(\d+)$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be resumed from, or a folder that is not this run's."""


# -- files -------------------------------------------------------------------------------------


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` and the folders themselves to disk."""
    for dirpath, _, files in os.walk(folder):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(dirpath))


def fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_sizes(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` (relative posix path -> bytes), the state file excepted."""
    return {
        p.relative_to(folder).as_posix(): p.stat().st_size
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != STATE_FILE
    }


def safetensors_problem(path: Path) -> str | None:
    """Why ``path`` is not a complete safetensors file (its header and the data it promises),
    or None."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            if len(head) < 8:
                return f"{path.name} is truncated ({size} bytes)"
            (n,) = struct.unpack("<Q", head)
            if n > size - 8:
                return f"{path.name} is truncated (header of {n} bytes, file of {size})"
            header = json.loads(f.read(n))
    except (OSError, ValueError) as e:
        return f"{path.name} cannot be read ({e})"
    end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
    if 8 + n + end != size:
        return f"{path.name} is truncated ({size} bytes, its header promises {8 + n + end})"
    return None


def checkpoint_problem(path: Path) -> str | None:
    """Why checkpoint folder ``path`` cannot be resumed from, or None when it is complete:
    its state file reads, every file it lists has the size recorded there, every safetensors
    file is whole. (A checkpoint of agen_hf <= 0.2 lists no files: its safetensors are checked.)
    """
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except FileNotFoundError:
        return f"no {STATE_FILE}"
    except (OSError, ValueError) as e:
        return f"{STATE_FILE} cannot be read ({e})"
    for name, size in state.get("files", {}).items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != size:
            return f"{name} has {file.stat().st_size} bytes, {size} were written"
    for file in sorted(path.glob("*.safetensors")):
        problem = safetensors_problem(file)
        if problem:
            return problem
    return None


# -- checkpoints -------------------------------------------------------------------------------


def list_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Checkpoint folders that finished saving (renamed, with a state file), oldest first;
    some may still be broken (:func:`checkpoint_problem`)."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _NAME.match(p.name)) and (p / STATE_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def newest_complete(output_dir: str | os.PathLike) -> Path | None:
    """The newest checkpoint in ``output_dir`` that is complete and readable; each broken
    newer one is reported (a warning naming its path and what is wrong) and passed over."""
    for path in reversed(list_checkpoints(output_dir)):
        problem = checkpoint_problem(path)
        if problem is None:
            return path
        logger.warning("skipping broken checkpoint %s: %s", path, problem)
    return None


def resolve_checkpoint(output_dir: str | os.PathLike, which: str) -> Path | None:
    """``"latest"`` -> the newest complete checkpoint in ``output_dir`` (an error if none);
    ``"auto"`` -> the same, or None (start fresh) when there is none; else a checkpoint
    folder, which must be complete."""
    if which in ("latest", "auto"):
        found = newest_complete(output_dir)
        if found is None and which == "latest":
            raise FileNotFoundError(
                f"--resume_from_checkpoint latest: no complete checkpoint "
                f"in {output_dir} (use auto to start fresh when there is "
                "none)"
            )
        return found
    path = Path(which)
    problem = checkpoint_problem(path)
    if problem:
        raise CheckpointError(
            f"--resume_from_checkpoint {which}: not a complete checkpoint ({problem})"
        )
    return path


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    step: int,
    state: dict,
    keep_last: int | None = None,
    model_files: Callable[[Path], None] | None = None,
) -> Path:
    """Save model, optimizer, RNG states and ``state`` as ``checkpoint-<step>``, atomically
    and durably (fsynced before the rename); keep only the newest ``keep_last`` checkpoints.
    ``model_files(folder)`` (main process) writes what makes the folder a loadable model beside
    ``model.safetensors`` (``config.json``, ``preprocessor_config.json``)."""
    root = Path(output_dir)
    final, tmp = root / f"checkpoint-{step}", root / f".tmp-checkpoint-{step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    wait_for_main(f"checkpoint-{step}'s folder")
    accelerator.save_state(str(tmp), safe_serialization=True)
    wait_for_main(f"checkpoint-{step}'s files")  # every process's files are in tmp
    if accelerator.is_main_process:
        if model_files is not None:
            model_files(tmp)
        (tmp / STATE_FILE).write_text(json.dumps({**state, "files": file_sizes(tmp)}, indent=2))
        fsync_tree(tmp)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        fsync_dir(root)
        if keep_last:
            for old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    wait_for_main(f"checkpoint-{step} written (fsync, rename, rotation)")
    return final


def load_checkpoint(accelerator: Accelerator, path: Path) -> dict:
    accelerator.load_state(str(path))
    return json.loads((path / STATE_FILE).read_text())


def remove_partial_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """Delete the temporary folders and files (``.tmp-*``) left by an interrupted save;
    returns what was removed."""
    root = Path(output_dir)
    stale = [p for p in root.glob(".tmp-*")] if root.is_dir() else []
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


def replace_files(tmp: Path, folder: Path) -> None:
    """Move every file of ``tmp`` (fsynced first) into ``folder``, each by an atomic rename,
    weights before configs, then remove ``tmp``: a kill at any point leaves each file either
    the old one or the new one, never a part-written one."""
    fsync_tree(tmp)
    names = sorted((p.name for p in tmp.iterdir()), key=lambda n: not n.endswith(".safetensors"))
    for name in names:
        os.replace(tmp / name, folder / name)
    fsync_dir(folder)
    tmp.rmdir()


def checkpoint_step(path: Path) -> int:
    """The step of a ``checkpoint-<step>`` folder."""
    return int(_NAME.match(path.name).group(1))

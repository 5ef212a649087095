"""The run that owns an output folder: a lock file names the process writing it (a second writer
is refused, naming the first's host and pid), a fresh run does not start over another run's
checkpoints unless told to (``overwrite``), and a resume whose fingerprint differs from the
checkpoint's is an error naming the fields that differ."""

from __future__ import annotations

import atexit
import hashlib
import json
import logging
import math
import os
import shutil
import socket
import time
from pathlib import Path

from accelerate import Accelerator

from ..atomic import write_text_atomic
from .checkpoints import (
    STATE_FILE,
    CheckpointError,
    checkpoint_problem,
    checkpoint_step,
    list_checkpoints,
    load_checkpoint,
    remove_partial_checkpoints,
    resolve_checkpoint,
)
from .distributed import from_main, wait_for_main

logger = logging.getLogger("agen_hf.train")

LOCK_FILE = ".agen-run.lock"
SCHEDULE_FIELDS = ("max_steps",)  # what --allow_schedule_change accepts: no sample is lost


def fingerprint(fields: dict) -> dict:
    """What defines a run, as recorded in its checkpoints: ``fields`` with every value made
    JSON-plain (tuples as lists); a long list (the sample ids) is stored as its count and
    sha256."""

    def plain(value):
        if isinstance(value, dict):
            return {str(k): plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            if len(value) > 64:
                digest = hashlib.sha256("\n".join(map(str, value)).encode()).hexdigest()
                return {"count": len(value), "sha256": digest}
            return [plain(v) for v in value]
        if isinstance(value, Path):
            return str(value)
        return value

    return plain(dict(fields))


def fingerprint_differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """The fields (dotted paths) in which two fingerprints differ, with both values."""
    out = []
    for key in sorted(set(saved) | set(current)):
        a, b = saved.get(key, "<absent>"), current.get(key, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict) and "sha256" not in a:
            out += fingerprint_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


def check_resume(
    saved: dict | None, current: dict | None, path: Path, allow_schedule_change: bool = False
) -> None:
    """Refuse to resume ``path`` with a fingerprint other than its own, naming the fields;
    ``allow_schedule_change`` accepts a change of the schedule's length alone (logged)."""
    if saved is None or current is None:  # a checkpoint of agen_hf <= 0.2, or no fingerprint
        return
    differences = fingerprint_differences(saved, current)
    schedule = [d for d in differences if d.split(":")[0] in SCHEDULE_FIELDS]
    if allow_schedule_change and schedule:
        logger.warning(
            "resuming %s with a changed schedule (--allow_schedule_change): %s",
            path,
            "; ".join(schedule),
        )
        differences = [d for d in differences if d not in schedule]
    if differences:
        hint = " (--allow_schedule_change accepts a new max_steps)" if schedule else ""
        raise CheckpointError(
            f"--resume_from_checkpoint: {path} belongs to another run; what differs: "
            f"{'; '.join(differences)}. Resume with the flags it was trained with, or start a "
            f"new run in another --output_dir{hint}"
        )


def take_lock(root: Path) -> Path:
    """Make this process the folder's only writer: create ``LOCK_FILE`` (host, pid, SLURM job,
    start time), removed when the process exits. A lock left by a dead process on this host, or
    by an earlier attempt of the same SLURM job (a requeue), is taken over; any other is an
    error naming its holder."""
    lock = root / LOCK_FILE
    me = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            if not _lock_is_stale(holder, me):
                raise CheckpointError(
                    f"{root} is being written by another run: pid {holder.get('pid')} on host "
                    f"{holder.get('host')} since {holder.get('started')} ({lock}). Use another "
                    "--output_dir, or delete the lock file if that run is dead"
                ) from None
            logger.warning(
                "taking over %s from pid %s on %s (%s)",
                lock,
                holder.get("pid"),
                holder.get("host"),
                "the same SLURM job"
                if holder.get("slurm_job_id") == me["slurm_job_id"]
                else "no longer running",
            )
            lock.unlink(missing_ok=True)
            continue
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        atexit.register(release_lock, lock)
        return lock
    raise CheckpointError(f"{lock}: could not be taken")


def _lock_is_stale(holder: dict, me: dict) -> bool:
    if not holder:
        return True  # unreadable or half-written: its writer died while creating it
    if holder.get("slurm_job_id") and holder.get("slurm_job_id") == me["slurm_job_id"]:
        return True
    if holder.get("host") != me["host"]:
        return False
    try:
        os.kill(int(holder["pid"]), 0)
    except ProcessLookupError:
        return True
    except (PermissionError, KeyError, ValueError, TypeError):
        return False
    return int(holder["pid"]) == me["pid"]


def release_lock(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    try:
        holder = json.loads(lock.read_text())
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            lock.unlink()
    except (OSError, ValueError):
        pass


def trim_log(log: Path, last_step: int) -> None:
    """Keep the records of ``train_log.jsonl`` up to ``last_step`` (a resumed run writes the
    later ones again), atomically."""
    if not log.is_file():
        return
    lines = log.read_text().splitlines(keepends=True)
    kept = [line for line in lines if _step_of(line) <= last_step]
    if len(kept) != len(lines):
        write_text_atomic(log, "".join(kept))


def _step_of(line: str) -> float:
    try:
        return int(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return math.inf  # a line cut by a kill: dropped


def start_output_dir(
    accelerator: Accelerator,
    output_dir: str | os.PathLike,
    resume_from: str | None = None,
    run: dict | None = None,
    overwrite: bool = False,
    allow_schedule_change: bool = False,
) -> dict:
    """Take ``output_dir`` for this run and, with ``resume_from`` (``"latest"``, ``"auto"``
    or a checkpoint folder), restore model, optimizer and RNG states from it.

    The main process creates the folder, takes its lock, removes what an interrupted save
    left, and decides; every process gets its decision (a refusal included, so that no process
    waits for one that gave up). A fresh run in a folder holding checkpoints is refused unless
    ``overwrite`` (which deletes them and the old log); so is resuming from a checkpoint older
    than the folder's newest complete one. ``run`` is this run's fingerprint, checked against
    the checkpoint's (:func:`check_resume`). Returns the saved position (``trainer_state.json``
    without its file list and fingerprint), or {} for a fresh run."""
    root = Path(output_dir)
    decision = [None, None]  # (the checkpoint to resume, or the refusal)
    if accelerator.is_main_process:
        try:
            decision[0] = _take_folder(root, resume_from, run, overwrite, allow_schedule_change)
        except (CheckpointError, FileNotFoundError) as e:
            decision[1] = str(e)
    wait_for_main(f"taking {root} for this run")
    decision = from_main(decision, "the resume decision")
    if decision[1]:
        raise CheckpointError(decision[1])
    if decision[0] is None:
        return {}
    path = Path(decision[0])
    state = load_checkpoint(accelerator, path)
    logger.info(
        "resumed from %s at step %d (epoch %d, batch %d)",
        path,
        state["global_step"],
        state["epoch"],
        state["batches_in_epoch"],
    )
    return {k: v for k, v in state.items() if k not in ("files", "run")}


def _take_folder(
    root: Path,
    resume_from: str | None,
    run: dict | None,
    overwrite: bool,
    allow_schedule_change: bool,
) -> str | None:
    """The main process's part of :func:`start_output_dir`; the checkpoint to resume."""
    root.mkdir(parents=True, exist_ok=True)
    take_lock(root)
    for stale in remove_partial_checkpoints(root):
        logger.warning("removed %s, left by an interrupted save", stale)
    path = resolve_checkpoint(root, resume_from) if resume_from else None
    later = [
        p
        for p in list_checkpoints(root)
        if path is None
        or (checkpoint_step(p) > checkpoint_step(path) and checkpoint_problem(p) is None)
    ]
    if later and not overwrite:
        what = "a fresh run" if path is None else f"resuming from {path}"
        raise CheckpointError(
            f"{root} holds checkpoints {', '.join(p.name for p in later)} of "
            f"{'another' if path is None else 'a later'} run; {what} would mix with them. "
            "Continue it with --resume_from_checkpoint auto, use another --output_dir, or "
            "pass --overwrite_output_dir to delete them"
        )
    if later:
        for p in later:
            shutil.rmtree(p)
        logger.warning("--overwrite_output_dir: deleted %s", ", ".join(p.name for p in later))
        if path is None:
            (root / "train_log.jsonl").unlink(missing_ok=True)
    if path is None:
        return None
    saved = json.loads((path / STATE_FILE).read_text())
    check_resume(saved.get("run"), run, path, allow_schedule_change)
    trim_log(root / "train_log.jsonl", saved["global_step"])
    return str(path)

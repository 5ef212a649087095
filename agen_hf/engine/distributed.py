"""What the processes of a data-parallel run do together, each collective named for its job.

Under N processes every process must enter every collective the same number of times, or the
job hangs. Two rules keep it from hanging and from staying stuck:

- **Collectives between processes doing the same step** (a training step's all-reduces, the
  validation's confusion-matrix sum, the gathering of skipped samples) are bounded by
  ``--ddp_timeout`` seconds (:data:`DDP_TIMEOUT`, transformers' name and default), passed to
  the process group when it starts (:func:`start_process_group`, before the bf16 probe of
  ``--mixed_precision auto`` can start it). A collective that times out, or whose peer died,
  raises :class:`CollectiveError` naming what the processes were doing (:func:`collective`).
- **Waiting for one process's own work** (indexing a dataset or rendering COCO masks the first
  time, writing a checkpoint or the final model, the Hub push) is not bounded by
  ``--ddp_timeout``: :func:`wait_for_main` and :func:`main_process_first` wait on a second,
  gloo process group without a practical time limit, so a slow disk or network never trips a
  timeout the user did not shorten. A process that dies while the others wait ends their wait
  at once (the connection closes), and the launcher ends the job.

With one process every function here is a no-op (or returns its input)."""

from __future__ import annotations

import contextlib
import logging
import os
import re
from datetime import timedelta
from typing import Any, Iterator

import torch
from accelerate import Accelerator

DDP_TIMEOUT = 1800
"""``--ddp_timeout``'s default in seconds (transformers' ``TrainingArguments.ddp_timeout``)."""

PATIENT_TIMEOUT = timedelta(days=7)
"""How long :func:`wait_for_main` waits for the main process's own work: in practice, as long
as it takes (a death ends the wait at once)."""

logger = logging.getLogger("agen_hf.distributed")

_group: dict[str, Any] = {"timeout": float(DDP_TIMEOUT), "patient": None}

# what torch.distributed's backends say when a peer did not answer or went away
_PEER_PROBLEM = re.compile(
    r"timed out|timeout|connection (closed|reset)|read error|broken pipe|"
    r"peer|nccl error|watchdog",
    re.IGNORECASE,
)


class CollectiveError(RuntimeError):
    """A collective that timed out (``--ddp_timeout``) or lost a peer, named for its job."""


def world_size() -> int:
    """The processes the launcher started (``WORLD_SIZE``; 1 without a launcher)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start_process_group(cpu: bool, timeout: float = DDP_TIMEOUT) -> None:
    """Start this multi-process launch's process group (Accelerate's ``PartialState``: gloo on
    CPUs, NCCL on GPUs) with ``timeout`` seconds for every collective, and the gloo group that
    :func:`wait_for_main` waits on. Nothing for one process, nor when both exist already (the
    first call's timeout stays). Every recipe calls it before anything else that
    communicates."""
    if timeout <= 0:
        raise ValueError(f"ddp_timeout must be > 0 seconds, got {timeout}")
    if world_size() <= 1:
        return
    from accelerate import PartialState

    if not torch.distributed.is_initialized():
        PartialState(cpu=cpu, timeout=timedelta(seconds=timeout))
        _group["timeout"] = float(timeout)
    if _group["patient"] is None:
        _group["patient"] = torch.distributed.new_group(backend="gloo", timeout=PATIENT_TIMEOUT)


def timeout_seconds() -> float:
    """The collectives' time limit this process's group started with."""
    return _group["timeout"]


def _active() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


@contextlib.contextmanager
def collective(what: str) -> Iterator[None]:
    """Run a block that communicates with the other processes; a timeout or a lost peer in it
    becomes a :class:`CollectiveError` that names ``what`` (e.g. ``"the validation's
    confusion-matrix sum"``) and the time limit. Other errors pass through unchanged."""
    try:
        yield
    except CollectiveError:
        raise
    except RuntimeError as e:
        distributed_error = isinstance(e, getattr(torch.distributed, "DistError", ()))
        if not _active() or not (distributed_error or _PEER_PROBLEM.search(str(e))):
            raise
        raise CollectiveError(
            f"{what}: the processes did not all take part within --ddp_timeout "
            f"{timeout_seconds():g} s, or one of them ended (process {process_index()} of "
            f"{world_size()}; the other processes' logs say which one failed or where it "
            f"is stuck): {str(e).splitlines()[0]}"
        ) from e


def process_index() -> int:
    """This process's rank in the launch (``RANK``; 0 without a launcher)."""
    return int(os.environ.get("RANK", "0"))


def sum_over_processes(accelerator: Accelerator, tensor: torch.Tensor, what: str) -> torch.Tensor:
    """``tensor`` summed over every process (one all-reduce, named ``what``)."""
    if accelerator.num_processes == 1:
        return tensor
    with collective(what):
        return accelerator.reduce(tensor.to(accelerator.device), "sum")


def gather_objects(value: Any, what: str) -> list:
    """Every process's ``value`` (picklable), in process order, within ``--ddp_timeout``."""
    if not _active():
        return [value]
    out: list = [None] * torch.distributed.get_world_size()
    with collective(what):
        torch.distributed.all_gather_object(out, value)
    return out


def from_main(value: Any, what: str) -> Any:
    """The main process's ``value`` (picklable) on every process, within ``--ddp_timeout``
    (after long work of the main process alone, :func:`wait_for_main` first)."""
    if not _active():
        return value
    box = [value]
    with collective(what):
        torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


def barrier(what: str) -> None:
    """Wait until every process is here, within ``--ddp_timeout``."""
    if _active():
        with collective(what):
            torch.distributed.barrier()


def wait_for_main(what: str) -> None:
    """Wait, without ``--ddp_timeout``, until every process is here: for the processes that
    wait while one process works alone (``what`` names that work)."""
    if _active():
        with collective(what):
            torch.distributed.barrier(group=_group["patient"])


@contextlib.contextmanager
def main_process_first(accelerator: Accelerator, what: str) -> Iterator[None]:
    """The main process runs the block first (builds a cache, renders masks), the others after
    it, from what it left (Accelerate's ``main_process_first``, waiting as
    :func:`wait_for_main` does)."""
    if not accelerator.is_main_process:
        wait_for_main(what)
    yield
    if accelerator.is_main_process:
        wait_for_main(what)


def broadcast_buffers(model: torch.nn.Module, what: str) -> None:
    """Give every process the main process's buffers (batch-norm running statistics) of
    ``model``, one broadcast per dtype: what DDP does at the start of a training forward, done
    here explicitly so that every process scores with the weights and buffers the main process
    saves, whether or not it has a batch to run."""
    if not _active():
        return
    by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
    for buffer in model.buffers():
        by_dtype.setdefault(buffer.dtype, []).append(buffer)
    with collective(what):
        for dtype in sorted(by_dtype, key=str):
            buffers = by_dtype[dtype]
            flat = torch.cat([b.detach().reshape(-1) for b in buffers])
            torch.distributed.broadcast(flat, src=0)
            offset = 0
            for b in buffers:
                b.data.copy_(flat[offset : offset + b.numel()].view_as(b))
                offset += b.numel()

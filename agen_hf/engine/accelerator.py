"""The Accelerator every recipe runs under."""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator


def make_accelerator(cpu: bool = False, **kwargs) -> Accelerator:
    """An ``Accelerator`` that also understands torchrun-style multi-process launches on a
    machine without GPUs: Accelerate only turns to gloo data parallelism when it is told the
    processes are CPU ones."""
    on_cpu = cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    return Accelerator(cpu=on_cpu, **kwargs)


def base_model(accelerator: Accelerator, model: torch.nn.Module) -> torch.nn.Module:
    """The model itself under whatever wraps it for training: DDP (Accelerate's
    ``unwrap_model``) and ``torch.compile`` (``_orig_mod``). What is saved, configured and
    introspected."""
    unwrapped = accelerator.unwrap_model(model)
    return getattr(unwrapped, "_orig_mod", unwrapped)


def cpus_per_process() -> int:
    """This machine's CPU cores shared among the processes a launcher started on it (for
    worker pools that should not oversubscribe the node)."""
    return max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))

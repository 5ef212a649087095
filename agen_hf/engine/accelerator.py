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

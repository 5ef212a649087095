"""The Accelerator every recipe runs under."""

from __future__ import annotations

import argparse
import os

import torch
from accelerate import Accelerator

from .optimizer import build_optimizer


def make_accelerator(cpu: bool = False, **kwargs) -> Accelerator:
    """An ``Accelerator`` that also understands torchrun-style multi-process launches on a
    machine without GPUs: Accelerate only turns to gloo data parallelism when it is told the
    processes are CPU ones."""
    on_cpu = cpu or (int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available())
    return Accelerator(cpu=on_cpu, **kwargs)


def prepare_training(accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module,
                     train_loader) -> tuple:
    """What every recipe does between building the model and training it, from the shared
    flags: ``--sync_bn``, the optimizer (:func:`~agen_hf.engine.optimizer.build_optimizer`),
    ``--channels_last``, ``--compile``, then ``accelerator.prepare``. Returns the prepared
    ``(model, optimizer, base_lrs, train_loader)``."""
    if args.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, base_lrs = build_optimizer(model, args)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if args.compile:
        model = torch.compile(model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    return model, optimizer, base_lrs, train_loader


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

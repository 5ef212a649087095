"""The Accelerator every recipe runs under (``--mixed_precision auto`` resolved for the device,
freed CPU memory kept, the process group started with ``--ddp_timeout``), what prepares a model
for training under it (sync-BN, channels-last, ``torch.compile``, ``accelerator.prepare``),
and the way back to the bare model."""

from __future__ import annotations

import logging
import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs

from .arguments import TrainingArguments
from .distributed import DDP_TIMEOUT, start_process_group, world_size
from .memory import keep_freed_memory
from .optimizer import build_optimizer
from .precision import resolve_mixed_precision

logger = logging.getLogger("agen_hf.train")


def make_accelerator(
    cpu: bool = False,
    mixed_precision: str | None = None,
    ddp_timeout: float = DDP_TIMEOUT,
    **kwargs,
) -> Accelerator:
    """An ``Accelerator`` that also understands torchrun-style multi-process launches on a
    machine without GPUs (Accelerate only turns to gloo data parallelism when it is told the
    processes are CPU ones), with ``mixed_precision="auto"`` resolved for the device
    (:func:`~agen_hf.engine.precision.resolve_mixed_precision`), and on a CPU freed memory
    kept for reuse (:func:`~agen_hf.engine.memory.keep_freed_memory`); both choices are
    logged. Under a multi-process launch the process group starts first, with ``ddp_timeout``
    seconds for every collective (:func:`~agen_hf.engine.distributed.start_process_group`),
    before the bf16 probe communicates."""
    on_cpu = cpu or (world_size() > 1 and not torch.cuda.is_available())
    start_process_group(on_cpu, ddp_timeout)
    precision, choice = resolve_mixed_precision(
        mixed_precision, on_cpu or not torch.cuda.is_available()
    )
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision, **kwargs)
    memory = keep_freed_memory() if accelerator.device.type == "cpu" else None
    for note in (choice, memory):
        if note:
            logger.info("%s", note)
    return accelerator


def training_accelerator(
    training: TrainingArguments, find_unused_parameters: bool = False
) -> Accelerator:
    """The Accelerator of a training recipe: its device, precision, accumulation, process-group
    timeout and trackers from ``training`` (a missing tracker, and ``--sync_bn`` in several CPU
    processes, are errors at start); ``find_unused_parameters`` when some steps train part of
    the model (DDP)."""
    training.check_trackers()
    accelerator = make_accelerator(
        training.cpu,
        gradient_accumulation_steps=training.gradient_accumulation_steps,
        mixed_precision=training.mixed_precision,
        ddp_timeout=training.ddp_timeout,
        log_with=training.report_to if training.with_tracking else None,
        project_dir=training.output_dir,
        kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
        ],
    )
    check_sync_bn(training.sync_bn, accelerator.num_processes, accelerator.device.type)
    return accelerator


def check_sync_bn(sync_bn: bool, num_processes: int, device_type: str) -> None:
    """``--sync_bn`` where it can run: DDP refuses SyncBatchNorm in processes on the CPU, and
    would say so only once the model is wrapped, after the data and the model are built."""
    if sync_bn and num_processes > 1 and device_type == "cpu":
        raise ValueError(
            f"--sync_bn: SyncBatchNorm pools batch statistics across GPUs only, and these "
            f"{num_processes} processes run on the CPU (PyTorch's DDP refuses it there): drop "
            "--sync_bn (each process then normalises over its own batch)"
        )


def prepare_training(
    accelerator: Accelerator, model: torch.nn.Module, train_loader, training: TrainingArguments
) -> tuple:
    """What every recipe does between building the model and training it: ``--sync_bn``, the
    optimizer (:func:`~agen_hf.engine.optimizer.build_optimizer`), ``--channels_last``,
    ``--compile``, then ``accelerator.prepare``. Returns the prepared ``(model, optimizer,
    base_lrs, train_loader)``."""
    if training.sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    optimizer, base_lrs = build_optimizer(
        model,
        training.optimizer,
        learning_rate=training.learning_rate,
        head_lr_multiplier=training.head_lr_multiplier,
        momentum=training.momentum,
        weight_decay=training.weight_decay,
    )
    if training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if training.compile:
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

"""The Accelerator every recipe runs under (``--mixed_precision auto`` resolved for the device)
and what prepares a model for training under it: sync-BN, the optimizer of section IV.1,
channels-last, ``torch.compile``, ``accelerator.prepare``, and the way back to the bare model."""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
import time

import torch
from accelerate import Accelerator

from .distributed import DDP_TIMEOUT, collective, start_process_group, world_size

PRECISIONS = ("no", "fp16", "bf16", "auto")  # --mixed_precision's choices in every recipe


BF16_MIN_SPEEDUP = 1.3  # bf16 over fp32 matrix-product rate for auto to take bf16 without AMX


def bf16_gemm_speedup(n: int = 1024, repeats: int = 3) -> float:
    """How much faster this CPU multiplies n-cube matrices in bf16 than in fp32 (best of
    ``repeats`` each, after a warm-up; ~0.1 s on a 2-core machine)."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        a @ b
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
        rates[dtype] = 1 / best
    return rates[torch.bfloat16] / rates[torch.float32]


def slowest_of_processes(value: float) -> float:
    """The smallest ``value`` of every process of a CPU launch (``WORLD_SIZE`` > 1), so that
    processes that each measured take one decision together; ``value`` itself alone. It
    starts the process group (:func:`~agen_hf.engine.distributed.start_process_group`) the
    Accelerator then uses, unless :func:`make_accelerator` started it first."""
    if world_size() <= 1:
        return value
    start_process_group(cpu=True)  # a no-op when make_accelerator started it (its timeout)
    agreed = torch.tensor([value], dtype=torch.float64)
    with collective("the bf16 probe's agreement (--mixed_precision auto)"):
        torch.distributed.all_reduce(agreed, op=torch.distributed.ReduceOp.MIN)
    return float(agreed.item())


def native_bf16(on_cpu: bool) -> tuple[str | None, str]:
    """Whether bf16 autocast pays on this device: ``(unit, why)`` with the unit that computes
    it (``"AMX"``, ``"AVX512-BF16"``, ``"CUDA"``) or None, and the reason in words. A CPU with
    AMX does; one with AVX512-BF16 but no AMX differs by microarchitecture (BENCHMARKS.md,
    issue 22: a 2-core machine without AMX ran bf16 matrix products at 0.49x fp32 and the
    quickstart's step at 0.9x; an AMD EPYC with AVX512-BF16 at 2.3x and 1.5x), so there the
    rate is measured (:func:`bf16_gemm_speedup`, the slowest process's figure under a
    multi-process launch) and bf16 taken from :data:`BF16_MIN_SPEEDUP`; a CPU with neither
    would emulate bf16."""
    if not on_cpu:
        return (
            ("CUDA", "GPU with bf16")
            if torch.cuda.is_bf16_supported()
            else (None, "this GPU has no bf16")
        )
    amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    if amx:
        return "AMX", "CPU with AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        speedup = slowest_of_processes(bf16_gemm_speedup())
        if speedup >= BF16_MIN_SPEEDUP:
            return "AVX512-BF16", (
                f"CPU with AVX512-BF16, no AMX: bf16 matrix products "
                f"measured {speedup:.2f}x fp32 here"
            )
        return None, (
            f"this CPU has AVX512-BF16 but no AMX, and bf16 matrix products measured "
            f"{speedup:.2f}x fp32 here (below {BF16_MIN_SPEEDUP}x)"
        )
    return None, "this CPU has no native bf16"


def resolve_mixed_precision(value: str | None, on_cpu: bool) -> tuple[str | None, str | None]:
    """``--mixed_precision`` as Accelerate takes it, and what to log about it: ``"auto"``
    becomes ``"bf16"`` where bf16 pays (:func:`native_bf16`: AMX, measured AVX512-BF16, a bf16
    GPU) and ``"no"`` (fp32) elsewhere, never the emulated or slower path; other values pass
    through."""
    if value != "auto":
        return value, None
    unit, why = native_bf16(on_cpu)
    if unit is None:
        return "no", f"--mixed_precision auto: fp32 ({why})"
    return "bf16", f"--mixed_precision auto: bf16 autocast ({why})"


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_MMAP_THRESHOLD_MAX = 32 * 2**20  # the largest mmap threshold glibc accepts on 64-bit


def keep_freed_memory() -> str | None:
    """Ask glibc's malloc to keep freed memory for the next allocation instead of giving it back
    to the kernel (``mallopt``: blocks up to 32 MiB from the heap, the heap never trimmed), and
    say so; None where the C library is not glibc.

    A training step frees and reallocates the same tensors every step. By default glibc hands
    large freed blocks back (``munmap``, heap trimming), so the next step's tensors page-fault
    on first touch: the quickstart's bf16 steps made ~2.5x the minor page faults and ran 10-25 %
    slower (classification 51 -> 44 ms, joint 116 -> 98 ms on a 2-core EPYC; BENCHMARKS.md,
    issue 20 item 4). Numbers are unchanged; the process keeps its peak memory until it ends,
    as PyTorch's CUDA caching allocator does on a GPU. Process-wide, so recipes call it
    (:func:`make_accelerator` on a CPU), never the library on import."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and other C libraries
        return None
    if not (
        mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) and mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX)
    ):
        return None
    return "freed CPU memory kept for reuse (glibc mallopt: no heap trimming, mmap above 32 MiB)"


def make_accelerator(
    cpu: bool = False,
    mixed_precision: str | None = None,
    ddp_timeout: float = DDP_TIMEOUT,
    **kwargs,
) -> Accelerator:
    """An ``Accelerator`` that also understands torchrun-style multi-process launches on a
    machine without GPUs (Accelerate only turns to gloo data parallelism when it is told the
    processes are CPU ones), with ``mixed_precision="auto"`` resolved for the device
    (:func:`resolve_mixed_precision`), and on a CPU freed memory kept for reuse
    (:func:`keep_freed_memory`); both choices are logged by
    :func:`agen_hf.engine.arguments.configure_logging` (``accelerator.precision_choice``,
    ``accelerator.memory_choice``). Under a multi-process launch the process group starts
    first, with ``ddp_timeout`` seconds for every collective
    (:func:`~agen_hf.engine.distributed.start_process_group`), before the bf16 probe
    communicates."""
    on_cpu = cpu or (world_size() > 1 and not torch.cuda.is_available())
    start_process_group(on_cpu, ddp_timeout)
    precision, choice = resolve_mixed_precision(
        mixed_precision, on_cpu or not torch.cuda.is_available()
    )
    accelerator = Accelerator(cpu=on_cpu, mixed_precision=precision, **kwargs)
    accelerator.precision_choice = choice
    accelerator.memory_choice = keep_freed_memory() if accelerator.device.type == "cpu" else None
    return accelerator


def build_optimizer(
    model: torch.nn.Module, args: argparse.Namespace
) -> tuple[torch.optim.Optimizer, list[float]]:
    """SGD (or AdamW) over ``model.parameter_groups()``: the ImageNet-initialised backbone at
    ``--learning_rate``, the new layers at ``--head_lr_multiplier`` times it. AdamW runs
    torch's fused kernel (the same update up to float rounding; at the quickstart's 94
    tensors its step takes 3.4 ms on a CPU against 11.2 ms for the per-tensor loop)."""
    groups = model.parameter_groups()
    base_lrs = [args.learning_rate, args.learning_rate * args.head_lr_multiplier]
    param_groups = [
        {"params": [q for q in groups["backbone"] if q.requires_grad], "lr": base_lrs[0]},
        {"params": [q for q in groups["new"] if q.requires_grad], "lr": base_lrs[1]},
    ]
    optimizer = (
        torch.optim.SGD(param_groups, momentum=args.momentum, weight_decay=args.weight_decay)
        if args.optimizer == "sgd"
        else torch.optim.AdamW(param_groups, weight_decay=args.weight_decay, fused=True)
    )
    return optimizer, base_lrs


def prepare_training(
    accelerator: Accelerator, args: argparse.Namespace, model: torch.nn.Module, train_loader
) -> tuple:
    """What every recipe does between building the model and training it, from the shared
    flags: ``--sync_bn``, the optimizer (:func:`build_optimizer`),
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

"""``--mixed_precision``: its choices, and ``auto`` resolved for the device: bf16 autocast where
the hardware computes it faster than fp32 (a GPU with bf16, a CPU with AMX, a CPU with
AVX512-BF16 whose bf16 matrix products measure faster at start), fp32 elsewhere."""

from __future__ import annotations

import time

import torch

from .distributed import collective, start_process_group, world_size

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
    AMX does; one with AVX512-BF16 but no AMX differs by microarchitecture (BENCHMARKS.md:
    a 2-core machine without AMX ran bf16 matrix products at 0.49x fp32 and the
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

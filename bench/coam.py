"""CoAM (eq. 5-9) as shipped (``scaled_dot_product_attention``, fused: the N x N attention is
never stored) vs the explicit N x N formulation, forward + backward on class-aware maps at
the paper's stride 8: time, peak memory, and equality of outputs and gradients.

    python bench/coam.py [--sizes 321 481] [--batches 1 15] [--out bench_coam.json]

Peak memory is the growth of the process's peak resident set (``VmHWM``, reset through
``/proc/self/clear_refs`` just before) during one forward + backward, each variant in a fresh
process (CPU tensors have no allocator statistics).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

from agen_hf.coam import ContextAttention

NUM_CLASSES = 20


def explicit_coam(weight: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Eq. 5-9 written out: the (B, N, N) attention map materialised."""
    b, c, h, w = low.shape
    q = low.flatten(2)  # (B, C, N)
    k = high.flatten(2)
    attention = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # (B, N, N), eq. 6-7
    out = q @ attention.transpose(1, 2)  # eq. 8: sum_j a_ij low_j
    return weight * out.reshape(b, c, h, w) + low


def inputs(size: int, batch: int, seed: int = 0):
    side = -(-size // 8)
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(batch, NUM_CLASSES, side, side, generator=g, requires_grad=True)
    high = torch.randn(batch, NUM_CLASSES, side, side, generator=g)
    return low, high


def step(variant: str, low, high, module: ContextAttention) -> torch.Tensor:
    out = module(low, high) if variant == "fused" else explicit_coam(module.weight, low, high)
    out.square().mean().backward()
    return out


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def peak_growth_kib(fn) -> int:
    """How far the resident set rises above its current size while ``fn`` runs."""
    try:
        before = _status_kib("VmRSS")
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
        fn()
        return _status_kib("VmHWM") - before
    except OSError:  # not Linux: the lifetime high-water mark is all there is
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fn()
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before


def measure(variant: str, size: int, batch: int, repeats: int) -> dict:
    """Run in a fresh process: peak-RSS growth of one step, then the median step time."""
    module = ContextAttention()
    with torch.no_grad():
        module.weight.fill_(0.5)
    low, high = inputs(size, batch)
    step(variant, low, high, module)  # warm-up: kernels, thread pools
    low.grad = None
    peak_kib = peak_growth_kib(lambda: step(variant, low, high, module))
    times = []
    for _ in range(repeats):
        low.grad = None
        t0 = time.perf_counter()
        step(variant, low, high, module)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {"peak_mib": peak_kib / 1024, "step_s": times[len(times) // 2]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[321, 481])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 15])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", default="bench_coam.json")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        variant, size, batch = args.child
        print(json.dumps(measure(variant, int(size), int(batch), args.repeats)))
        return

    rows = []
    for size in args.sizes:
        for batch in args.batches:
            low, high = inputs(size, batch)
            module = ContextAttention()
            with torch.no_grad():
                module.weight.fill_(0.5)
            a = step("fused", low, high, module)
            grad_a, grad_w = low.grad.clone(), module.weight.grad.clone()
            low.grad, module.weight.grad = None, None
            b = step("explicit", low, high, module)
            row = {
                "input": size,
                "positions": a.shape[-1] * a.shape[-2],
                "batch": batch,
                "max_abs_diff_output": (a - b).abs().max().item(),
                "max_abs_diff_grad": max(
                    (grad_a - low.grad).abs().max().item(),
                    (grad_w - module.weight.grad).abs().max().item(),
                ),
            }
            for variant in ("fused", "explicit"):
                out = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--repeats",
                        str(args.repeats),
                        "--child",
                        variant,
                        str(size),
                        str(batch),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                for k, v in json.loads(out.stdout.strip().splitlines()[-1]).items():
                    row[f"{variant}_{k}"] = v
            row["memory_ratio"] = row["fused_peak_mib"] / max(row["explicit_peak_mib"], 1e-9)
            row["time_ratio"] = row["fused_step_s"] / row["explicit_step_s"]
            rows.append(row)
            print(json.dumps(row))
    result = {
        "rows": rows,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "machine": platform.processor() or platform.machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

"""One training step (forward + backward of L_total, eq. 15) of the paper-size AGEN at 321^2
and of the tiny config: FLOPs (``torch.utils.flop_counter``), achieved GFLOP/s and their
ratio to a GEMM peak measured in the same run, and the cost of the full AGEN (AGM-3/4/5 +
CoAM-3/4/5) relative to the baseline (branches A + B) — Table 1's first and last rows.

    python bench/train_step.py [--batch 1] [--size 321] [--repeats 3] [--out bench_train_step.json]
    python bench/train_step.py --device cuda --batch 15 --dtypes fp32 bf16   # on a GPU

The boundary loss's CRF runs outside torch (pydensecrf) and is timed separately: the step
figures here use ``use_boundary_loss=False`` so that FLOPs and time describe the same work;
``bench/crf.py`` puts the CRF next to them.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from agen_hf import AgenConfig, AgenModel  # noqa: E402

ROWS = {"baseline": ((), ()), "full": ((3, 4, 5), (3, 4, 5))}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def gemm_peak(device: str, dtype: torch.dtype, sizes: list[int], repeats: int = 5) -> float:
    """Best GFLOP/s of n x n x n matrix products over ``sizes``: the machine's practical
    peak for dense math in this dtype."""
    best_rate = 0.0
    for n in sizes:
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            a @ b
            sync(device)
            best_rate = max(best_rate, 2 * n ** 3 / (time.perf_counter() - t0) / 1e9)
    return best_rate


def make_batch(config: AgenConfig, batch: int, size: int, device: str):
    g = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(batch, 3, size, size, generator=g).to(device)
    labels = torch.zeros(batch, config.num_classes)
    labels[torch.arange(batch), torch.randint(0, config.num_classes, (batch,), generator=g)] = 1
    return pixel_values, labels.to(device)


def time_step(model: AgenModel, pixel_values, labels, device: str, dtype: torch.dtype,
              repeats: int) -> tuple[float, int]:
    """Median seconds of a forward + backward step, and its FLOPs."""
    autocast = torch.autocast(device.split(":")[0], dtype=dtype,
                              enabled=dtype != torch.float32)

    def step():
        with autocast:
            out = model(pixel_values, labels)
        out.loss.backward()
        model.zero_grad(set_to_none=True)

    counter = FlopCounterMode(display=False)
    with counter:
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2], counter.get_total_flops()


def bench_config(name: str, base: AgenConfig, args, dtype: torch.dtype, peak: float) -> dict:
    result = {}
    for row, (agm, coam) in ROWS.items():
        config = AgenConfig.from_dict({**base.to_dict(), "agm_stages": agm, "coam_stages": coam,
                                       "use_boundary_loss": False})
        torch.manual_seed(0)
        model = AgenModel(config).to(args.device).train()
        pixel_values, labels = make_batch(config, args.batch, args.size, args.device)
        if args.device.startswith("cuda"):
            torch.cuda.reset_peak_memory_stats()
        seconds, flops = time_step(model, pixel_values, labels, args.device, dtype,
                                   args.repeats)
        entry = {"step_s": seconds, "gflop": flops / 1e9, "gflop_per_s": flops / seconds / 1e9,
                 "fraction_of_gemm_peak": flops / seconds / 1e9 / peak,
                 "images_per_s": args.batch / seconds,
                 "parameters": sum(p.numel() for p in model.parameters())}
        if args.device.startswith("cuda"):
            entry["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2 ** 30
        result[row] = entry
        print(f"{name} {row}: {json.dumps(entry)}", flush=True)
        del model
    result["full_over_baseline_time"] = result["full"]["step_s"] / result["baseline"]["step_s"]
    result["full_over_baseline_flops"] = result["full"]["gflop"] / result["baseline"]["gflop"]
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--configs", nargs="+", default=["paper", "tiny"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=["fp32", "bf16"])
    p.add_argument("--gemm_sizes", type=int, nargs="+", default=[1024, 2048, 4096])
    p.add_argument("--out", default="bench_train_step.json")
    args = p.parse_args()
    result = {"device": args.device, "batch": args.batch, "size": args.size,
              "threads": torch.get_num_threads(), "torch": torch.__version__,
              "machine": (torch.cuda.get_device_name() if args.device.startswith("cuda")
                          else platform.processor() or platform.machine()),
              "date": time.strftime("%Y-%m-%d")}
    for dtype_name in args.dtypes:
        dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
        peak = gemm_peak(args.device, dtype, args.gemm_sizes)
        result[f"gemm_peak_gflop_per_s_{dtype_name}"] = peak
        print(f"GEMM peak ({dtype_name}, best of {args.gemm_sizes}): {peak:.1f} GFLOP/s",
              flush=True)
        for name in args.configs:
            base = AgenConfig() if name == "paper" else AgenConfig.tiny()
            result[f"{name}_{dtype_name}"] = bench_config(name, base, args, dtype, peak)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if not isinstance(v, dict)}, indent=2))


if __name__ == "__main__":
    main()

"""AGEN on other backbones, at the paper's size: for each pair (branch A / branch B) the
parameters, GFLOP of one training step (forward + backward of L_total, eq. 15, the boundary
CRF left out as in ``bench/train_step.py``) at 321^2, its median time in fp32 and in bf16
autocast on this machine with the share of the GEMM peak it reaches (measured in the same
run), and the step's peak memory (the process's resident set on a CPU, allocated memory on a
GPU). Each pair and precision runs in a fresh process so that its peak is its own.

    python bench/backbones.py [--batch 1] [--size 321] [--repeats 3] [--out bench_backbones.json]
    python bench/backbones.py --pairs vgg16/resnet38 resnet50/resnet50 --device cuda --batch 15
"""

import argparse
import json
import platform
import resource
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PAIRS = [
    "vgg16/resnet38",  # the paper's
    "resnet50/resnet50",
    "convnext_tiny/convnext_tiny",
    "timm:vit_small_patch16_224/resnet38",
]


def measure(pair: str, dtype: str, args) -> dict:
    """One pair in one precision, in this process."""
    sys.path.insert(0, str(ROOT / "bench"))
    from train_step import gemm_peak, make_batch, time_step

    from agen_hf import AgenConfig, AgenModel
    from agen_hf.engine.memory import keep_freed_memory

    if args.device == "cpu":
        keep_freed_memory()  # as the recipes run
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    peak = gemm_peak(args.device, torch_dtype, [1024, 2048])
    a, b = pair.split("/")
    config = AgenConfig(branch_a=a, branch_b=b, use_boundary_loss=False)
    torch.manual_seed(0)
    model = AgenModel(config).to(args.device).train()
    pixel_values, labels = make_batch(config, args.batch, args.size, args.device)
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    seconds, flops = time_step(model, pixel_values, labels, args.device, torch_dtype, args.repeats)
    row = {
        "pair": pair,
        "precision": dtype,
        "share_stem": config.share_stem,
        "output_stride": model.output_stride,
        "parameters": sum(p.numel() for p in model.parameters()),
        "gflop_per_step": flops / 1e9,
        "gflop_per_image": flops / 1e9 / args.batch,
        "step_s": seconds,
        "gflop_per_s": flops / seconds / 1e9,
        "gemm_peak_gflop_per_s": peak,
        "share_of_gemm_peak": flops / seconds / 1e9 / peak,
    }
    if args.device.startswith("cuda"):
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30
    else:
        row["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return row


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", nargs="+", default=PAIRS, help="branch_a/branch_b")
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--size", type=int, default=321)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path)
    p.add_argument("--one", nargs=2, metavar=("PAIR", "DTYPE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print("ROW " + json.dumps(measure(*args.one, args)), flush=True)
        return
    rows = []
    for pair in args.pairs:
        for dtype in args.dtypes:
            command = [
                sys.executable,
                __file__,
                "--one",
                pair,
                dtype,
                "--batch",
                str(args.batch),
                "--size",
                str(args.size),
                "--repeats",
                str(args.repeats),
                "--device",
                args.device,
            ]
            proc = subprocess.run(command, capture_output=True, text=True)
            found = [line for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            if proc.returncode or not found:
                print(f"{pair} {dtype}: failed\n{proc.stderr[-2000:]}", flush=True)
                continue
            row = json.loads(found[-1][4:])
            rows.append(row)
            print(
                f"{pair:38} {dtype}: {row['parameters'] / 1e6:7.1f} M params, "
                f"{row['gflop_per_step']:7.1f} GFLOP/step, {row['step_s']:6.2f} s "
                f"({row['share_of_gemm_peak']:.0%} of {row['gemm_peak_gflop_per_s']:.0f} GFLOP/s), "
                f"peak {row.get('peak_memory_gib', row.get('peak_rss_gib')):.2f} GiB",
                flush=True,
            )
    if args.out:
        args.out.write_text(
            json.dumps(
                {
                    "machine": platform.processor() or platform.machine(),
                    "torch": torch.__version__,
                    "batch": args.batch,
                    "size": args.size,
                    "rows": rows,
                },
                indent=1,
            )
        )


if __name__ == "__main__":
    main()

"""The GPU check: one command, under 8 minutes on one GPU, no internet, only the project's own
install. It prints and writes (``OUT/gpu_check.json``, each part's JSON beside it):

1. the paper-size training step (full AGEN and baseline, batch 15, 321 x 321) in fp32 and bf16:
   seconds, images/s, share of the GEMM peak, peak memory against the paper's 11 GB
   (``bench/train_step.py``), channels-last, then bf16 with ``torch.compile``;
2. the boundary loss's CRF (pydensecrf, on the CPU, ``bench/crf.py``) as a share of that step,
   serial and over 8 worker processes (``--boundary_crf_processes 8``), flagged above 10 %;
3. a 200-step quickstart on the GPU (``recipes/quickstart.yaml`` on 4,000 images, 140
   classification + 60 joint steps, ``--mixed_precision auto``) and its val mIoU;
4. eval images/s of that model on the synthetic val split in fp32 and bf16
   (``recipes/eval_voc.py``), and the two mIoUs.

    python bench/gpu_check.py [--out runs/gpu_check]
    python bench/gpu_check.py --device cpu --smoke     # the tests' run: every part, tiny sizes

Each part runs as its own process with a time limit; a part that fails is reported with its
last output lines and the others still run (exit 1 when any failed).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAPER_MEMORY_GIB = 11.0  # the paper's 2080Ti
CRF_SHARE_LIMIT = 0.10


def sizes(smoke: bool) -> dict:
    if smoke:  # every code path, in seconds on a CPU
        return {
            "config": "tiny",
            "batch": 2,
            "size": 64,
            "repeats": 1,
            "gemm": [256],
            "steps": 6,
            "warmup": 4,
            "train_images": 32,
            "val_images": 8,
            "image": 48,
            "crf_images": 2,
            "crf_processes": 2,
            "limit": 300,
        }
    return {
        "config": "paper",
        "batch": 15,
        "size": 321,
        "repeats": 3,
        "gemm": [2048, 4096],
        "steps": 200,
        "warmup": 140,
        "train_images": 4000,
        "val_images": 100,
        "image": 64,
        "crf_images": 8,
        "crf_processes": 8,
        "limit": 240,
    }


def run_part(name: str, command: list[str], limit: int, log: Path) -> dict:
    """Run one part; its status, seconds and (on failure) the last lines of its output."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "AGEN_HF_PROGRESS_BARS": "off",
    }
    print(f"== {name}: {' '.join(command)}", flush=True)
    started = time.time()
    try:
        proc = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=limit
        )
        status, output = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as e:
        status = "timeout"
        output = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(
            errors="replace"
        )
    log.write_text(output)
    seconds = time.time() - started
    part = {"status": status, "seconds": round(seconds, 1), "log": str(log)}
    if status != 0:
        part["tail"] = output[-2000:]
        print(
            f"   FAILED ({status}) after {seconds:.0f} s; last lines:\n{output[-1500:]}", flush=True
        )
    return part


def read(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/gpu_check")
    p.add_argument("--device", default="cuda", help="cuda (the check) or cpu (with --smoke)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script itself")
    args = p.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    s = sizes(args.smoke)
    py = sys.executable
    cpu = ["--cpu"] if args.device == "cpu" else []
    step_args = [
        "--device",
        args.device,
        "--configs",
        s["config"],
        "--batch",
        str(s["batch"]),
        "--size",
        str(s["size"]),
        "--repeats",
        str(s["repeats"]),
        "--gemm_sizes",
        *map(str, s["gemm"]),
    ]
    synthetic = [
        "--synthetic_val_size",
        str(s["val_images"]),
        "--synthetic_image_size",
        str(s["image"]),
        "--seed",
        "0",
    ]
    parts = {
        "step": [
            py,
            "bench/train_step.py",
            *step_args,
            "--dtypes",
            "fp32",
            "bf16",
            "--channels_last",
            "--out",
            str(out / "step.json"),
        ],
        "step_compile": [
            py,
            "bench/train_step.py",
            *step_args,
            "--dtypes",
            "bf16",
            "--channels_last",
            "--compile",
            "--out",
            str(out / "step_compile.json"),
        ],
        "crf": [
            py,
            "bench/crf.py",
            "--batch",
            str(s["batch"]),
            "--size",
            str(s["size"]),
            "--images",
            str(s["crf_images"]),
            "--processes",
            str(s["crf_processes"]),
            "--repeats",
            "1",
            "--out",
            str(out / "crf.json"),
        ],
        "quickstart": [
            py,
            "recipes/train_voc.py",
            "--config",
            "recipes/quickstart.yaml",
            "--max_train_steps",
            str(s["steps"]),
            "--seeding_warmup_steps",
            str(s["warmup"]),
            "--lr_restart_at",
            str(s["warmup"]),
            "--synthetic_size",
            str(s["train_images"]),
            *synthetic,
            "--cam_figure",
            "0",
            "--output_dir",
            str(out / "quickstart"),
            *cpu,
        ],
        **{
            f"eval_{precision}": [
                py,
                "recipes/eval_voc.py",
                "--model",
                str(out / "quickstart"),
                "--dataset",
                "synthetic",
                *synthetic,
                "--mixed_precision",
                precision,
                "--num_workers",
                "0",
                "--output",
                str(out / f"eval_{precision}.json"),
                *cpu,
            ]
            for precision in ("no", "bf16")
        },
    }
    if args.smoke:
        parts["step_compile"] += ["--compile_backend", "eager"]
        parts["quickstart"] += [
            "--model_config",
            "tiny",
            "--per_device_train_batch_size",
            "2",
            "--boundary_crf",
            "torch",
        ]
    report = {
        "device": args.device,
        "smoke": args.smoke,
        "date": time.strftime("%Y-%m-%d"),
        "parts": {},
    }
    shutil.rmtree(out / "quickstart", ignore_errors=True)  # a fresh run every time
    started = time.time()
    for name, command in parts.items():
        report["parts"][name] = run_part(name, command, s["limit"], out / f"{name}.log")
    report["total_seconds"] = round(time.time() - started, 1)
    report["summary"] = summarize(out, s["config"])
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    failed = [n for n, part in report["parts"].items() if part["status"] != 0]
    print(
        f"gpu check: {report['total_seconds']:.0f} s, "
        + (f"FAILED: {', '.join(failed)}" if failed else "every part ran")
        + f"; written {out / 'gpu_check.json'}"
    )
    if failed:
        raise SystemExit(1)
    return report


def summarize(out: Path, config: str) -> dict:
    """The check's figures, from the parts' JSON files (None where a part failed)."""
    summary: dict = {}
    step, compiled = read(out / "step.json"), read(out / "step_compile.json")
    crf = read(out / "crf.json")
    for dtype in ("fp32", "bf16"):
        if step and f"{config}_{dtype}" in step:
            full = step[f"{config}_{dtype}"]["full"]
            summary[f"step_{dtype}"] = {
                k: full.get(k)
                for k in ("step_s", "images_per_s", "fraction_of_gemm_peak", "peak_memory_gib")
            }
            memory = full.get("peak_memory_gib")
            if memory is not None:
                summary[f"step_{dtype}"]["fits_11_gib"] = memory <= PAPER_MEMORY_GIB
            if crf:  # serial (the default) and over --boundary_crf_processes workers
                for kind, key in (("", "serial"), ("_pooled", "batch_pool")):
                    seconds = crf["boundary_loss_crf"][f"pydensecrf_present_classes_{key}_s"]
                    share = seconds / (full["step_s"] + seconds)
                    summary[f"crf_share{kind}_{dtype}"] = share
                    summary[f"crf_share{kind}_{dtype}_above_10_percent"] = share > CRF_SHARE_LIMIT
    if step and f"{config}_full_bf16_speedup" in step:
        summary["bf16_speedup"] = step[f"{config}_full_bf16_speedup"]
    if compiled and f"{config}_bf16" in compiled:
        summary["step_bf16_compiled_s"] = compiled[f"{config}_bf16"]["full"]["step_s"]
    trained = read(out / "quickstart" / "eval_results.json")
    if trained:
        summary["quickstart_val_miou"] = trained["val_mean_iou"]
        summary["quickstart_train_s"] = trained["train_seconds"]
    for precision in ("no", "bf16"):
        scored = read(out / f"eval_{precision}.json")
        if scored:
            summary[f"eval_{precision}"] = {
                "mean_iou": scored["mean_iou"],
                "images_per_s": scored["images_per_second"],
            }
    return summary


if __name__ == "__main__":
    main()

"""Weak-supervision quality on the embedded synthetic data: Table 1's rows (baseline, OA, SC,
MA, AC) trained from image-level labels with several seeds, the ``--full_supervision`` upper
bound, and how good each head's pseudo labels are against the exact masks.

    python bench/quality.py [--rows baseline oa sc ma ac agm3 agm5 coam5 coam45 cls_only]
        [--seeds 0 1 2] [--jobs 2]
        [--extra --optimizer adamw --learning_rate 0.001]  # flags passed to train_voc.py

Every run is ``recipes/train_voc.py --config recipes/quickstart.yaml --seed S`` with the row's
flags (``ROW_FLAGS``: ``--preset ROW`` for Table 1, ``--agm_stages`` / ``--coam_stages`` for
Tables 2 and 3; the upper bound: ``--config recipes/quickstart_full.yaml``), plus ``--extra``,
in its own process; the seed also draws the synthetic data. Per run also: how many foreground
classes score an IoU above 0 (a mean can hide classes at zero). Per run: val
mIoU of branch B (eval_results.json), and on the same val images, per head (A, AGM-5/4/3):
the mIoU of its dense pseudo labels (argmax of eq. 4's background and the CAMs of the image's
classes) and of its seeds (eq. 2-4 with δ; unassigned pixels count as errors), plus the
seeds' foreground coverage. Prints mean +- std per row and the weak/full ratio; writes JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from agen_hf import AgenModel  # noqa: E402
from agen_hf.cam import dense_pseudo_labels, pseudo_labels  # noqa: E402
from agen_hf.data import make_synthetic  # noqa: E402
from agen_hf.data.transforms import collate, eval_transform, with_transforms  # noqa: E402
from agen_hf.metrics import StreamingMeanIoU  # noqa: E402

RECIPE = ROOT / "recipes" / "train_voc.py"
QUICKSTART = ROOT / "recipes" / "quickstart.yaml"
QUICKSTART_FULL = ROOT / "recipes" / "quickstart_full.yaml"
VAL_SEED_OFFSET = 1_000_003  # train_voc.py's synthetic val split: seed + this
ROW_FLAGS = {  # train_voc.py's flags of each row
    **{row: ["--preset", row] for row in ("baseline", "oa", "sc", "ma", "ac")},  # Table 1
    # Table 2: AGM at one stage (agm4 = oa)
    **{f"agm{n}": ["--agm_stages", str(n), "--coam_stages"] for n in (3, 4, 5)},
    # Table 3: accumulated CoAM on MA from the top stage down (coam345 = ac)
    "coam5": ["--preset", "ma", "--coam_stages", "5"],
    "coam45": ["--preset", "ma", "--coam_stages", "4", "5"],
    "cls_only": ["--preset", "baseline", "--seeding_warmup_steps", str(2**31 - 1)],
    "full": ["--preset", "ac"],
}


def train(
    row: str, seed: int, out: Path, extra: list[str], threads: int, reuse: bool = False
) -> dict:
    config = QUICKSTART_FULL if row == "full" else QUICKSTART
    args = [
        sys.executable,
        str(RECIPE),
        "--config",
        str(config),
        "--seed",
        str(seed),
        "--output_dir",
        str(out),
        "--num_workers",
        "0",
        *extra,
    ]
    args += ROW_FLAGS[row]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    record = out / "bench_quality_run.json"  # the command of a finished run, for --reuse
    command = {"argv": args[1:], "threads": threads}
    done = json.loads(record.read_text()) if reuse and record.is_file() else {}
    if done.get("command") == command:
        result = json.loads((out / "eval_results.json").read_text())
        result["wall_s"] = done["wall_s"]
    else:
        started = time.time()
        proc = subprocess.run(args, env=env, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            raise RuntimeError(f"{row} seed {seed} failed:\n{proc.stderr[-3000:]}")
        result = json.loads((out / "eval_results.json").read_text())
        result["wall_s"] = time.time() - started
        record.write_text(json.dumps({"command": command, "wall_s": result["wall_s"]}))
    iou = list(result["val_per_category_iou"].values())[1:]  # foreground classes
    result["classes_above_zero"] = sum(v > 0 for v in iou)
    return result


@torch.no_grad()
def pseudo_label_quality(model_dir: Path, seed: int, size: int, count: int) -> dict:
    """Per head: dense pseudo-label mIoU, seed mIoU (unassigned = wrong), seed coverage."""
    model = AgenModel.from_pretrained(model_dir).eval()
    cfg = model.config
    val = with_transforms(
        make_synthetic(count, seed=seed + VAL_SEED_OFFSET, image_size=size), eval_transform()
    )
    dense = {h: StreamingMeanIoU(cfg.num_labels) for h in model.heads}
    seeds = {h: StreamingMeanIoU(cfg.num_labels) for h in model.heads}
    covered = {h: 0 for h in model.heads}
    foreground = 0
    for i in range(len(val)):
        s = collate([val[i]])
        out = model(s["pixel_values"])
        mask, labels = s["mask"], s["labels"]
        fg = (mask > 0) & (mask != cfg.ignore_index)
        foreground += fg.sum().item()
        for head in model.heads:
            maps = out.class_maps[head]
            dense[head].update(
                dense_pseudo_labels(maps, labels, mask.shape[-2:], cfg.cam_alpha), mask
            )
            h_seeds = pseudo_labels(
                maps, labels, mask.shape[-2:], cfg.cam_alpha, cfg.threshold(head), cfg.ignore_index
            )
            seeds[head].update(h_seeds, mask)
            covered[head] += (fg & (h_seeds == mask)).sum().item()
    return {
        head: {
            "dense_miou": float(dense[head].compute()["mean_iou"]),
            "seed_miou": float(seeds[head].compute()["mean_iou"]),
            "seed_foreground_coverage": covered[head] / max(foreground, 1),
        }
        for head in model.heads
    }


def mean_std(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "values": values,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--rows",
        nargs="*",
        default=["baseline", "oa", "sc", "ma", "ac"],
        choices=[r for r in ROW_FLAGS if r != "full"],
        help="Table 1 rows (baseline oa sc ma ac), Table 2's single AGMs (agm3 "
        "agm4 agm5), Table 3's CoAM stages on MA (coam5 coam45), and "
        "cls_only: branch A trained with its classification loss alone, "
        "whose CAMs measure the data's difficulty",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--no_full", action="store_true", help="skip the full-supervision runs")
    p.add_argument("--jobs", type=int, default=2, help="runs at a time")
    p.add_argument("--threads", type=int, default=1, help="torch threads per run")
    p.add_argument("--work_dir", default="runs/bench_quality")
    p.add_argument(
        "--reuse",
        action="store_true",
        help="take a run whose folder holds a finished run of the same command "
        "(bench_quality_run.json) instead of training it again",
    )
    p.add_argument(
        "--extra",
        nargs=argparse.REMAINDER,
        default=[],
        help="flags passed on to train_voc.py (must come last)",
    )
    p.add_argument("--out", default="bench_quality.json")
    args = p.parse_args()
    rows = args.rows + ([] if args.no_full else ["full"])
    jobs = [(row, seed) for row in rows for seed in args.seeds]
    work = Path(args.work_dir)
    started = time.time()
    with ThreadPoolExecutor(args.jobs) as pool:  # each job is its own process
        futures = {
            job: pool.submit(
                train, *job, work / f"{job[0]}-seed{job[1]}", args.extra, args.threads, args.reuse
            )
            for job in jobs
        }
        runs = {job: f.result() for job, f in futures.items()}
    quick = yaml.safe_load(QUICKSTART.read_text())
    size, count = quick["synthetic_image_size"], quick["synthetic_val_size"]
    result = {
        "rows": {},
        "extra_flags": args.extra,
        "seeds": args.seeds,
        "date": time.strftime("%Y-%m-%d"),
        "total_wall_s": None,
    }
    for row in rows:
        entry = {
            "val_miou": mean_std([runs[(row, s)]["val_mean_iou"] for s in args.seeds]),
            "train_s": mean_std([runs[(row, s)]["train_seconds"] for s in args.seeds]),
            "classes_above_zero": [runs[(row, s)]["classes_above_zero"] for s in args.seeds],
            "per_category_iou": [runs[(row, s)]["val_per_category_iou"] for s in args.seeds],
        }
        if row != "full":
            per_seed = [
                pseudo_label_quality(work / f"{row}-seed{s}", s, size, count) for s in args.seeds
            ]
            entry["pseudo_labels"] = {
                head: {k: mean_std([q[head][k] for q in per_seed]) for k in per_seed[0][head]}
                for head in per_seed[0]
            }
        result["rows"][row] = entry
        print(
            f"{row:9s} val mIoU {100 * entry['val_miou']['mean']:5.2f} "
            f"+- {100 * entry['val_miou']['std']:4.2f} % (seeds "
            f"{', '.join(f'{100 * v:.2f}' for v in entry['val_miou']['values'])}; classes "
            f"above 0 IoU {entry['classes_above_zero']})",
            flush=True,
        )
    if "full" in result["rows"]:
        full = result["rows"]["full"]["val_miou"]["mean"]
        result["weak_over_full"] = {
            row: result["rows"][row]["val_miou"]["mean"] / full for row in args.rows
        }
    means = {row: result["rows"][row]["val_miou"]["mean"] for row in args.rows}
    if "cls_only" in result["rows"] and "full" in result["rows"]:
        dense = result["rows"]["cls_only"]["pseudo_labels"]["A"]["dense_miou"]["mean"]
        result["plain_cam_over_full"] = dense / result["rows"]["full"]["val_miou"]["mean"]
    steps = {}  # Table 1's order: each step's mean gain against the pooled std of its rows
    for low, high in (("baseline", "oa"), ("oa", "sc"), ("baseline", "ma"), ("ma", "ac")):
        if {low, high} <= set(means):
            a, b = (result["rows"][r]["val_miou"] for r in (low, high))
            pooled = ((a["std"] ** 2 + b["std"] ** 2) / 2) ** 0.5
            steps[f"{low}<{high}"] = {
                "gain": b["mean"] - a["mean"],
                "pooled_std": pooled,
                "holds": b["mean"] - a["mean"] > pooled,
            }
    result["table1_order"] = steps
    if {"baseline", "ma", "ac"} <= set(means):
        result["paper_order_baseline_lt_ma_lt_ac"] = means["baseline"] < means["ma"] < means["ac"]
    result["total_wall_s"] = time.time() - started
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=2))
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()

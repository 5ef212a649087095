"""Where the seconds of a real training run go: ``recipes/train_voc.py`` run in this process
with every named part of it timed (no profiler: wall-clock timers around the calls), so the
figures are the run's own, loader and bookkeeping included.

    python bench/loop_profile.py [--out bench_loop_profile.json] -- \
        --config recipes/quickstart.yaml --output_dir runs/profile [any train_voc.py flag]

Parts: start-up (arguments, the data indexed or rendered, the model built, the loaders and
the accelerator prepared, the run folder), the loader (time spent waiting for each batch),
the training step (forward, backward, optimizer; by phase: classification ``step <
seeding_warmup_steps``, then joint), the step's log record, checkpoints, periodic
validation, the rest of the loop (between the parts above), and the run's end (final
validation, save, card, figure). The printed table lists each part's total seconds, its
calls, ms per call and share of the run; with ``--out`` also as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "recipes"))

import torch  # noqa: E402

from agen_hf.engine import loop, run  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from train_step import gemm_peak  # noqa: E402

GEMM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TOTALS: dict[str, float] = defaultdict(float)
CALLS: dict[str, int] = defaultdict(int)


def timed(name: str, fn, key=None):
    """``fn`` with its wall time added to ``TOTALS[name]`` (or ``key(args)``'s name)."""

    def wrapper(*args, **kwargs):
        start = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            part = key(args, kwargs) if key else name
            TOTALS[part] += time.perf_counter() - start
            CALLS[part] += 1

    return wrapper


def timed_iterator(name: str, iterator):
    while True:
        start = time.perf_counter()
        try:
            item = next(iterator)
        except StopIteration:
            TOTALS[name] += time.perf_counter() - start
            return
        TOTALS[name] += time.perf_counter() - start
        CALLS[name] += 1
        yield item


def install(warmup_steps: int) -> None:
    """Wrap the loop's and the run's named parts (looked up at call time by their callers)."""

    def phase(args, kwargs):
        step = args[7]
        return "step: classification" if step < warmup_steps else "step: joint"

    loop.training_step = timed("step", loop.training_step, key=phase)
    loop.log_step = timed("log record", loop.log_step)
    loop.save_checkpoint = timed("checkpoints", loop.save_checkpoint)
    loop.validate = timed("periodic validation", loop.validate)
    batches = loop.epoch_batches
    loop.epoch_batches = lambda *a, **k: timed_iterator("loader", batches(*a, **k))
    run.TrainingRun.start = timed("start-up: run folder", run.TrainingRun.start)
    run.TrainingRun.validate = timed("end: final validation", run.TrainingRun.validate)
    run.TrainingRun.save = timed("end: save model", run.TrainingRun.save)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("recipe_args", nargs=argparse.REMAINDER)
    args = p.parse_args()
    recipe_args = [a for a in args.recipe_args if a != "--"]
    started = time.perf_counter()
    import train_voc  # noqa: E402

    parsed = train_voc.parse_args(recipe_args)
    install(parsed[1].seeding_warmup_steps if not parsed[1].full_supervision else 0)
    train_voc.datasets_for = timed("start-up: data", train_voc.datasets_for)
    train_voc.build_model = timed("start-up: model", train_voc.build_model)
    train_voc.write_cam_figure = timed("end: figure", train_voc.write_cam_figure)
    train_voc.train = timed("loop", train_voc.train)
    try:
        result = train_voc.main(recipe_args)
    except SystemExit as e:  # a run that ends with a non-zero exit status still reports
        result = {"exit": e.code}
    total = time.perf_counter() - started
    inner = ("step: classification", "step: joint", "log record", "checkpoints", "loader")
    inner += ("periodic validation",)
    TOTALS["loop: between the parts"] = TOTALS["loop"] - sum(TOTALS[k] for k in inner)
    TOTALS["outside the loop"] = total - TOTALS["loop"]
    rows = []
    print(f"{'part':34s} {'s':>8s} {'calls':>6s} {'ms/call':>8s} {'share':>6s}")
    for name in sorted(TOTALS, key=lambda k: -TOTALS[k]):
        seconds, calls = TOTALS[name], CALLS.get(name, 0)
        per = 1000 * seconds / calls if calls else float("nan")
        rows.append({"part": name, "seconds": seconds, "calls": calls, "ms_per_call": per})
        print(f"{name:34s} {seconds:8.1f} {calls:6d} {per:8.2f} {100 * seconds / total:5.1f}%")
    print(f"{'whole run':34s} {total:8.1f}")
    peaks = {name: gemm_peak("cpu", dtype, [2048]) for name, dtype in GEMM_DTYPES.items()}
    print(
        "GEMM GFLOP/s at 2048^3 (after the run): "
        + ", ".join(f"{name} {value:.0f}" for name, value in peaks.items())
    )
    if args.out:
        args.out.write_text(
            json.dumps(
                {"whole_run_s": total, "parts": rows, "gemm": peaks, "result": result},
                indent=2,
                default=str,
            )
        )


if __name__ == "__main__":
    main()

"""Does a change keep training bit-identical? Runs a 30-step fp32 quickstart that reaches the
joint phase (seeds, eq. 12-14, the boundary CRF and AGM's branch D all run) and the same for
the fully supervised upper bound, each straight through and killed (SIGKILL) after its
step-15 checkpoint then resumed, with the recipes of a given source tree; records every
step's losses and a digest of every saved weight, and checks the resumed run against the
straight one. Run it on two trees and compare:

    python bench/identical_runs.py --code /path/to/old/checkout --out old.json
    python bench/identical_runs.py --code . --out new.json
    python bench/identical_runs.py --compare old.json new.json [--rtol 1e-5]

``--rtol``: every logged value may differ by that much relative (a change that reorders float
arithmetic), and the weights' digests and the val mIoU, which then differ too, are not
compared; the largest relative difference is printed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from safetensors.torch import load_file

CONFIGS = ("quickstart.yaml", "quickstart_full.yaml")
SHORT = [
    "--max_train_steps", "30", "--seeding_warmup_steps", "10", "--lr_restart_at", "10",
    "--warmup_steps", "5", "--mixed_precision", "no", "--checkpointing_steps", "15",
    "--cam_figure", "0", "--num_workers", "0", "--synthetic_size", "200",
]  # fmt: skip
# (200 images: 12 steps an epoch, so the 30 steps read each image 2-3 times)


def run(code: Path, config: str, out: Path, env: dict, kill_after: int | None = None) -> None:
    command = [
        sys.executable,
        str(code / "recipes" / "train_voc.py"),
        "--config",
        str(code / "recipes" / config),
        *SHORT,
        "--output_dir",
        str(out),
        "--resume_from_checkpoint",
        "auto",
    ]
    log = open(out.with_suffix(".log"), "a")
    proc = subprocess.Popen(command, env=env, cwd=code, stdout=log, stderr=subprocess.STDOUT)
    if kill_after is not None:
        marker = out / f"checkpoint-{kill_after}" / "trainer_state.json"
        while not marker.is_file() and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return
    if proc.wait() not in (0, 3):
        raise SystemExit(f"{' '.join(command)} exited {proc.returncode}: see {log.name}")


def record(out: Path) -> dict:
    weights = load_file(out / "model.safetensors")
    return {
        "losses": [json.loads(line) for line in (out / "train_log.jsonl").open()],
        "weights": {
            k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()[:16]
            for k, v in sorted(weights.items())
        },
        "val_mean_iou": json.loads((out / "eval_results.json").read_text())["val_mean_iou"],
    }


def differences(a: dict, b: dict, rtol: float = 0.0) -> list[str]:
    """What differs between two records: every logged value (floats within ``rtol``
    relative), then, with ``rtol`` 0 only, the weights' digests and the val mIoU."""
    out = []
    if len(a["losses"]) != len(b["losses"]):
        out.append(f"{len(a['losses'])} vs {len(b['losses'])} logged steps")
    for x, y in zip(a["losses"], b["losses"]):
        for key in sorted(set(x) | set(y)):
            u, v = x.get(key), y.get(key)
            if u == v or (rtol and _relative_difference(u, v) <= rtol):
                continue
            out.append(f"step {x.get('step')}: {key} {u!r} vs {v!r}")
    if rtol:
        return out
    names = sorted(set(a["weights"]) | set(b["weights"]))
    changed = [k for k in names if a["weights"].get(k) != b["weights"].get(k)]
    if changed:
        out.append(f"{len(changed)} weights differ: {', '.join(changed[:5])}")
    if a["val_mean_iou"] != b["val_mean_iou"]:
        out.append(f"val mIoU {a['val_mean_iou']} vs {b['val_mean_iou']}")
    return out


def _relative_difference(u, v) -> float:
    """``|u - v| / max(|u|, |v|)`` for two floats (0 when equal); infinite for anything else
    that differs (a missing value, a string)."""
    if u == v:
        return 0.0
    if isinstance(u, float) and isinstance(v, float):
        return abs(u - v) / max(abs(u), abs(v))
    return float("inf")


def largest_relative_difference(a: dict, b: dict) -> float:
    """The largest :func:`_relative_difference` over the floats both records logged."""
    return max(
        (
            _relative_difference(x[key], y[key])
            for x, y in zip(a["losses"], b["losses"])
            for key in set(x) & set(y)
            if isinstance(x[key], float) and isinstance(y[key], float)
        ),
        default=0.0,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[1])
    p.add_argument("--out", type=Path, help="the runs' records (JSON)")
    p.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    p.add_argument("--compare", nargs=2, type=Path, metavar="JSON")
    p.add_argument("--rtol", type=float, default=0.0, help="with --compare: losses' tolerance")
    args = p.parse_args()
    if args.compare:
        a, b = (json.loads(path.read_text()) for path in args.compare)
        found = False
        for config in CONFIGS:
            for kind in ("straight", "resumed"):
                diff = differences(a[config][kind], b[config][kind], args.rtol)
                found |= bool(diff)
                steps = len(a[config][kind]["losses"])
                worst = largest_relative_difference(a[config][kind], b[config][kind])
                same = (
                    f"every loss within {args.rtol:g} relative ({steps} steps; largest {worst:.1e})"
                    if args.rtol
                    else f"identical ({steps} steps, every loss and weight)"
                )
                print(f"{config} {kind}: " + ("; ".join(diff[:8]) or same))
        raise SystemExit(1 if found else 0)
    code = args.code.resolve()
    env = {**os.environ, "PYTHONPATH": str(code), "AGEN_HF_PROGRESS_BARS": "off"}
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        for config in CONFIGS:
            straight, killed = work / f"{config}-straight", work / f"{config}-resumed"
            started = time.time()
            run(code, config, straight, env)
            run(code, config, killed, env, kill_after=15)
            run(code, config, killed, env)
            results[config] = {"straight": record(straight), "resumed": record(killed)}
            diff = differences(results[config]["straight"], results[config]["resumed"])
            print(
                f"{config}: straight vs killed at 15 and resumed: "
                + ("; ".join(diff[:8]) or "identical")
                + f" ({time.time() - started:.0f} s)",
                flush=True,
            )
    if args.out:
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()

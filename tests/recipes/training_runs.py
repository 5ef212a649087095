"""The training recipe run as a user runs it: its command line on the tiny config and a few
synthetic images, in a fresh interpreter, and the log it writes."""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "train_voc.py"


def base_args(out, steps=8, batch=4, extra=()):
    return [
        "--dataset",
        "synthetic",
        "--model_config",
        "tiny",
        "--synthetic_size",
        "16",
        "--synthetic_val_size",
        "4",
        "--synthetic_image_size",
        "64",
        "--per_device_train_batch_size",
        str(batch),
        "--max_train_steps",
        str(steps),
        "--num_workers",
        "0",
        "--deterministic",
        "--boundary_crf",
        "torch",
        "--output_dir",
        str(out),
        *extra,
    ]


def run(args, env, patch="", launcher=None, check=True):
    """Run the recipe in a fresh interpreter, after ``patch`` (Python) has run there."""
    script = textwrap.dedent(f"""
        import runpy, sys
        sys.path.insert(0, {str(ROOT)!r})
        {textwrap.indent(textwrap.dedent(patch), "        ").strip()}
        sys.argv = [{str(RECIPE)!r}] + {list(map(str, args))!r}
        runpy.run_path({str(RECIPE)!r}, run_name="__main__")
    """)
    cmd = launcher or [sys.executable]
    proc = subprocess.run(
        [*cmd, "-c", script] if launcher is None else [*cmd, str(RECIPE), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
        )
    return proc


def log(out):
    return [json.loads(line) for line in (Path(out) / "train_log.jsonl").read_text().splitlines()]

"""``bench/gpu_check.py`` runs every part end to end (here on the CPU at tiny sizes,
``--smoke``), so that the command is ready when a GPU is lent, and its summary holds every
figure it promises."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_every_part(tmp_path):
    pytest.importorskip("pydensecrf.densecrf")  # bench/crf.py times pydensecrf
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "gpu_check.py"),
            "--device",
            "cpu",
            "--smoke",
            "--out",
            str(tmp_path / "check"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "check" / "gpu_check.json").read_text())
    assert [n for n, p in report["parts"].items() if p["status"] == 0] == [
        "step",
        "step_compile",
        "crf",
        "quickstart",
        "eval_no",
        "eval_bf16",
    ]
    summary = report["summary"]
    for dtype in ("fp32", "bf16"):
        assert summary[f"step_{dtype}"]["step_s"] > 0
        assert 0 < summary[f"crf_share_{dtype}"] < 1
    assert summary["bf16_speedup"] > 0 and summary["step_bf16_compiled_s"] > 0
    assert 0 <= summary["quickstart_val_miou"] <= 1
    assert summary["eval_no"]["images_per_s"] > 0
    assert abs(summary["eval_no"]["mean_iou"] - summary["eval_bf16"]["mean_iou"]) <= 0.05
    assert "every part ran" in proc.stdout

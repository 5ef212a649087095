"""What an older agen_hf wrote still works (``tests/fixtures/run-0.1.0``, written by 0.1.0):
its checkpoint resumes under its own ``training_args.yaml`` and finishes the run bit for bit as
it did then (every logged loss, every weight), and its saved model loads and segments."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from training_runs import RECIPE, ROOT

from agen_hf import AgenModel
from agen_hf.auto import load_segmentation_model

OLD = ROOT / "tests" / "fixtures" / "run-0.1.0"


def test_an_older_checkpoint_resumes_under_its_settings_and_ends_the_run_as_it_did(tmp_path, env):
    run = tmp_path / "runs" / "compat"
    run.mkdir(parents=True)
    shutil.copytree(OLD / "checkpoint-2", run / "checkpoint-2")
    shutil.copy(OLD / "train_log.jsonl", run / "train_log.jsonl")
    shutil.copy(OLD / "micro.json", tmp_path / "micro.json")
    proc = subprocess.run(
        [
            sys.executable,
            str(RECIPE),
            "--config",
            str(OLD / "training_args.yaml"),
            "--resume_from_checkpoint",
            "auto",
        ],
        cwd=tmp_path,  # the settings name the folders relative to where the run started
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resumed from runs/compat/checkpoint-2 at step 2" in proc.stderr
    then = [json.loads(line) for line in (OLD / "train_log.jsonl").open()]
    now = [json.loads(line) for line in (run / "train_log.jsonl").open()]
    # steps 1-2 kept from before the resume, 3-4 trained again: the same terms and values (to
    # float rounding: another CPU or thread count sums in another order; on the machine and
    # thread count that wrote them, bit for bit)
    assert [r["step"] for r in now] == [1, 2, 3, 4] and now[:2] == then[:2]
    for a, b in zip(now[2:], then[2:]):
        assert a.keys() == b.keys()
        assert all(a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-6) for k in a), (a, b)
    old, new = load_file(OLD / "model" / "model.safetensors"), load_file(run / "model.safetensors")
    assert old.keys() == new.keys()
    assert all(torch.allclose(old[k], new[k], rtol=1e-4, atol=1e-6) for k in old)


def test_an_older_model_loads_and_segments():
    for model in (AgenModel.from_pretrained(OLD / "model"), load_segmentation_model(OLD / "model")):
        assert model.config.num_labels == 21 and model.config.agm_stages == (3, 4, 5)
        logits = model(torch.randn(1, 3, 32, 32), segmentation_only=True).logits
        assert logits.shape == (1, 21, 4, 4) and torch.isfinite(logits).all()

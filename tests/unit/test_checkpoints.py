"""Checkpoint rotation, ``latest`` / ``auto``, broken checkpoints passed over
(:mod:`agen_hf.engine.checkpoints`), and the position a resume restores into the run's own
folder (:mod:`agen_hf.engine.run_folder`)."""

import json

import pytest
import torch
from accelerate import Accelerator

from agen_hf.engine import checkpoints as ckpt
from agen_hf.engine import run_folder
from agen_hf.engine.loop import TrainState

# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture
def accelerator():
    acc = Accelerator(cpu=True)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    acc.model, acc.optimizer = acc.prepare(model, optimizer)
    return acc


def save(accelerator, root, step, keep_last=None):
    state = {"global_step": step, "epoch": step // 4, "batches_in_epoch": step % 4}
    return ckpt.save_checkpoint(accelerator, root, step, state, keep_last=keep_last)


def test_rotation_keeps_the_newest_and_latest_names_the_newest(tmp_path, accelerator):
    for step in (2, 4, 6, 8):
        path = save(accelerator, tmp_path, step, keep_last=2)
        assert path == tmp_path / f"checkpoint-{step}" and path.is_dir()
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-6", "checkpoint-8"]
    assert not list(tmp_path.glob(".tmp-*"))  # nothing half-written left behind
    assert ckpt.resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-8"
    assert ckpt.resolve_checkpoint(tmp_path, "auto") == tmp_path / "checkpoint-8"
    saved = json.loads((tmp_path / "checkpoint-8" / ckpt.STATE_FILE).read_text())
    assert saved["global_step"] == 8 and "model.safetensors" in saved["files"]
    # numbers sort as numbers, not as text: checkpoint-10 is newer than checkpoint-8
    save(accelerator, tmp_path, 10)
    assert ckpt.resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-10"


def test_latest_passes_over_a_broken_checkpoint_and_names_it(tmp_path, accelerator, caplog):
    save(accelerator, tmp_path, 3)
    newest = save(accelerator, tmp_path, 6)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])  # a truncated file
    assert "model.safetensors" in ckpt.checkpoint_problem(newest)
    with caplog.at_level("WARNING"):
        assert ckpt.resolve_checkpoint(tmp_path, "latest") == tmp_path / "checkpoint-3"
    assert f"skipping broken checkpoint {newest}" in caplog.text
    with pytest.raises(ckpt.CheckpointError, match="not a complete checkpoint"):
        ckpt.resolve_checkpoint(tmp_path, str(newest))


def test_an_empty_folder_starts_fresh_with_auto_and_is_an_error_with_latest(tmp_path):
    assert ckpt.resolve_checkpoint(tmp_path, "auto") is None
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        ckpt.resolve_checkpoint(tmp_path, "latest")
    (tmp_path / ".tmp-checkpoint-5").mkdir()  # an interrupted save is no checkpoint
    assert ckpt.list_checkpoints(tmp_path) == []
    assert ckpt.remove_partial_checkpoints(tmp_path) == [tmp_path / ".tmp-checkpoint-5"]


def test_a_resume_restores_the_step_counter_and_the_weights(tmp_path, accelerator):
    run = run_folder.fingerprint({"seed": 0, "max_steps": 20})
    assert run_folder.start_output_dir(accelerator, tmp_path, "auto", run) == {}  # fresh
    saved_weight = accelerator.model.weight.detach().clone()
    state = {"global_step": 7, "epoch": 1, "batches_in_epoch": 3, "bad_samples": 0, "run": run}
    ckpt.save_checkpoint(accelerator, tmp_path, 7, state)
    with torch.no_grad():
        accelerator.model.weight.add_(1.0)  # training went on, then the job died
    run_folder.release_lock(tmp_path / run_folder.LOCK_FILE)
    position = run_folder.start_output_dir(accelerator, tmp_path, "auto", run)
    assert TrainState(**position) == TrainState(
        global_step=7, epoch=1, batches_in_epoch=3, bad_samples=0
    )
    assert torch.equal(accelerator.model.weight, saved_weight)
    # another run's fingerprint does not resume here
    run_folder.release_lock(tmp_path / run_folder.LOCK_FILE)
    with pytest.raises(ckpt.CheckpointError, match="seed"):
        run_folder.start_output_dir(
            accelerator, tmp_path, "auto", run_folder.fingerprint({"seed": 1})
        )

"""The engine's pieces read directly, function by function (the loop as a whole runs in
test_train_voc.py and test_faults.py): the sampler's order per ``(seed, epoch)``, the seeded
augmentation and bad-sample substitutes, checkpoint rotation and ``latest`` / ``auto``, and the
position a resume restores."""

import json

import pytest
import torch
from accelerate import Accelerator

from agen_hf.engine import checkpointing as ckpt
from agen_hf.engine.loop import TrainState
from agen_hf.engine.sampling import EpochSampler, SeededSamples

# -- sampling ------------------------------------------------------------------------------------


def epoch_order(seed: int, epoch: int, n: int = 12, shuffle: bool = True) -> list[int]:
    sampler = EpochSampler(n, seed, shuffle)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_each_epoch_is_a_permutation_of_its_own_virtual_indices():
    for epoch in range(3):
        order = epoch_order(seed=0, epoch=epoch)
        assert sorted(order) == list(range(12 * epoch, 12 * epoch + 12))
    assert epoch_order(0, 2, shuffle=False) == list(range(24, 36))
    assert len(EpochSampler(12, 0)) == 12


def test_the_order_depends_on_seed_and_epoch_alone():
    assert epoch_order(seed=3, epoch=1) == epoch_order(seed=3, epoch=1)
    torch.manual_seed(123)  # the global RNG plays no part
    assert epoch_order(seed=3, epoch=1) == epoch_order(seed=3, epoch=1)
    local = [i % 12 for i in epoch_order(seed=3, epoch=1)]
    assert local != [i % 12 for i in epoch_order(seed=3, epoch=2)]
    assert local != [i % 12 for i in epoch_order(seed=4, epoch=1)]
    # a sampler moved to an epoch and back gives that epoch's order again
    sampler = EpochSampler(12, 3)
    sampler.set_epoch(5)
    list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) == epoch_order(seed=3, epoch=1)


class Draws:
    """A dataset whose 'augmentation' is a draw from torch's RNG; sample ``i`` is bad when
    ``i`` is in ``bad``."""

    def __init__(self, n: int, bad: set[int] = frozenset()) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        draw = torch.rand(()).item()
        pixels = None if i in self.bad else torch.full((1,), float(i))
        return {"id": f"s{i}", "pixel_values": pixels, "draw": draw}


def test_a_sample_draws_its_augmentation_from_seed_and_virtual_index_alone():
    samples = SeededSamples(Draws(5), seed=7)
    first = samples[13]
    torch.manual_seed(0)
    state = torch.get_rng_state()
    again = samples[13]
    assert torch.equal(torch.get_rng_state(), state)  # the caller's RNG is left untouched
    assert again["draw"] == first["draw"] and again["id"] == "s3"  # 13 % 5
    assert samples[8]["id"] == "s3" and samples[8]["draw"] != first["draw"]  # another epoch
    assert SeededSamples(Draws(5), seed=8)[13]["draw"] != first["draw"]


def test_a_bad_sample_is_replaced_by_the_next_good_one_with_its_own_draw():
    good, with_bad = SeededSamples(Draws(5), seed=1), SeededSamples(Draws(5, {2, 3}), seed=1)
    substitute = with_bad[2]
    assert substitute["id"] == "s4" and substitute["replaced"] == "s2"
    assert substitute["draw"] == good[2]["draw"]  # the augmentation the bad one would have had
    assert with_bad[8]["id"] == "s4" and with_bad[8]["replaced"] == "s3"  # 8 % 5 = 3: bad
    assert "replaced" not in with_bad[4]
    with pytest.raises(RuntimeError, match="every one of the 5 training samples is bad"):
        SeededSamples(Draws(5, set(range(5))), seed=1)[0]


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
    run = ckpt.fingerprint({"seed": 0, "max_steps": 20})
    assert ckpt.start_output_dir(accelerator, tmp_path, "auto", run) == {}  # fresh
    saved_weight = accelerator.model.weight.detach().clone()
    state = {"global_step": 7, "epoch": 1, "batches_in_epoch": 3, "bad_samples": 0, "run": run}
    ckpt.save_checkpoint(accelerator, tmp_path, 7, state)
    with torch.no_grad():
        accelerator.model.weight.add_(1.0)  # training went on, then the job died
    ckpt.release_lock(tmp_path / ckpt.LOCK_FILE)
    position = ckpt.start_output_dir(accelerator, tmp_path, "auto", run)
    assert TrainState(**position) == TrainState(
        global_step=7, epoch=1, batches_in_epoch=3, bad_samples=0
    )
    assert torch.equal(accelerator.model.weight, saved_weight)
    # another run's fingerprint does not resume here
    ckpt.release_lock(tmp_path / ckpt.LOCK_FILE)
    with pytest.raises(ckpt.CheckpointError, match="seed"):
        ckpt.start_output_dir(accelerator, tmp_path, "auto", ckpt.fingerprint({"seed": 1}))


# -- the loop's data position --------------------------------------------------------------------


def test_a_resumed_epoch_continues_with_the_batches_a_straight_run_would_have_seen():
    from torch.utils.data import DataLoader

    from agen_hf.engine.loop import epoch_batches

    acc = Accelerator(cpu=True)
    loader = acc.prepare(
        DataLoader(SeededSamples(Draws(12), seed=2), batch_size=3, sampler=EpochSampler(12, seed=2))
    )
    straight = [b["id"] for b in epoch_batches(acc, loader, TrainState(epoch=0), epoch=1)]
    assert len(straight) == 4
    state = TrainState(global_step=6, epoch=1, batches_in_epoch=2)  # died after 2 of epoch 1
    resumed = [b["id"] for b in epoch_batches(acc, loader, state, epoch=1)]
    assert resumed == straight[2:]
    assert (state.epoch, state.batches_in_epoch) == (1, 2)  # counted from where it stopped
    # the next epoch starts from its first batch, in its own order
    following = [b["id"] for b in epoch_batches(acc, loader, state, epoch=2)]
    assert len(following) == 4 and following != straight
    assert (state.epoch, state.batches_in_epoch) == (2, 0)


def test_too_many_nonfinite_losses_in_a_row_stop_training_with_advice():
    from agen_hf.engine.loop import check_nonfinite

    assert check_nonfinite(2, limit=3, step=40) == 2
    with pytest.raises(RuntimeError, match="3 non-finite losses in a row .* at step 41"):
        check_nonfinite(3, limit=3, step=41)

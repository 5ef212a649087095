"""The loop's pieces read directly (the loop as a whole runs in the recipe tests): a resumed
epoch's batches, and divergence (:mod:`agen_hf.engine.loop`)."""

import pytest
from accelerate import Accelerator
from test_sampling import Draws

from agen_hf.engine.loop import TrainState
from agen_hf.engine.sampling import EpochSampler, SeededSamples

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

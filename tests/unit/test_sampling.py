"""The sampler's order per ``(seed, epoch)``, the seeded augmentation and the bad-sample
substitutes (:mod:`agen_hf.engine.sampling`)."""

import pytest
import torch

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

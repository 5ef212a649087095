"""Deterministic data order and augmentation for exact resume and process-count invariance.

:class:`EpochSampler` yields *virtual indices* ``epoch * N + i``: the order of epoch ``e`` is a
permutation drawn from ``(seed, e)`` alone. :class:`SeededSamples` maps a virtual index back to
sample ``i`` and draws its augmentation from ``(seed, virtual index)`` alone. A sample's crop
and flip therefore depend neither on the worker nor on the process that loads it, nor on
whether training was interrupted, so resuming at batch ``k`` replays exactly what a straight
run would have seen.

A bad sample (skipped by ``--skip_bad_samples``) is replaced by a deterministic substitute, the
next good sample in index order, with the augmentation the bad one would have had: every batch
keeps its size, so every data-parallel process takes the same step (a process whose whole
batch was bad would otherwise skip a step the others take, and the job would hang).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch.utils.data import Dataset, Sampler

_MIX = 0x9E3779B97F4A7C15  # golden-ratio constant: decorrelates nearby seeds


def _seed(*parts: int) -> int:
    h = 0
    for p in parts:
        h = (h * _MIX + p + 1) % (2**63 - 1)
    return h


class EpochSampler(Sampler[int]):
    """Shuffled (or sequential) order, fixed per ``(seed, epoch)``; call :meth:`set_epoch`."""

    def __init__(self, num_samples: int, seed: int, shuffle: bool = True) -> None:
        self.num_samples, self.seed, self.shuffle = num_samples, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            g = torch.Generator().manual_seed(_seed(self.seed, self.epoch))
            order = torch.randperm(self.num_samples, generator=g).tolist()
        else:
            order = range(self.num_samples)
        base = self.epoch * self.num_samples
        return iter(base + i for i in order)


class SeededSamples(Dataset):
    """``samples[v]`` is ``dataset[v % N]`` with torch's RNG seeded from ``(seed, v)`` while it
    is transformed (the caller's RNG state is left untouched). A sample the dataset returns as
    skipped (``pixel_values`` None) is replaced by the next good one, ``(v + k) % N``; its id
    is in the substitute's ``replaced`` field."""

    def __init__(self, dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, virtual_index: int):
        n, first_id = len(self.dataset), None
        for k in range(n):
            with torch.random.fork_rng(devices=[]):
                # the CPU generator alone (the one forked; transforms draw from it):
                # torch.manual_seed also seeds every accelerator backend, ~1 ms a call
                torch.default_generator.manual_seed(_seed(self.seed, virtual_index))
                sample = self.dataset[(virtual_index + k) % n]
            if not isinstance(sample, dict) or sample.get("pixel_values") is not None:
                if k:
                    sample = {**sample, "replaced": first_id}
                return sample
            if k == 0:
                first_id = sample.get("id", str(virtual_index % n))
        raise RuntimeError(f"every one of the {n} training samples is bad: nothing to train on")

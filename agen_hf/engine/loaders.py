"""The training and validation loaders of section IV.1: the paper's augmentation with
deterministic per-sample seeds and epoch order (exact resume), and this process's shard of the
val set at original size, both normalised with the model's own statistics."""

from __future__ import annotations

from typing import Sequence

import datasets
import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from ..data.transforms import collate, eval_transform, train_transform, with_transforms
from .arguments import TrainingArguments
from .evaluation import shard_loader
from .sampling import EpochSampler, SeededSamples


def train_loader(
    train_ds: datasets.Dataset,
    *,
    batch_size: int,
    crop_size: int,
    scale_range: Sequence[int],
    image_mean: Sequence[float],
    image_std: Sequence[float],
    seed: int,
    num_workers: int = 0,
    skip_bad_samples: bool = False,
    hold_decoded: bool = False,
) -> DataLoader:
    """Shuffled batches of augmented ``train_ds`` samples, each drawn from ``(seed, epoch,
    index)`` alone (:mod:`agen_hf.engine.sampling`); ``hold_decoded``: each image kept
    decoded after its first read (:class:`~agen_hf.data.transforms.TransformedSamples`)."""
    transform = train_transform(crop_size, tuple(scale_range), image_mean, image_std)
    transformed = with_transforms(train_ds, transform, skip_bad_samples, hold_decoded)
    samples = SeededSamples(transformed, seed)
    return DataLoader(
        samples,
        batch_size=batch_size,
        sampler=EpochSampler(len(samples), seed),
        collate_fn=collate,
        drop_last=True,
        num_workers=num_workers,
        # its own generator: creating an iterator (e.g. on resume) must not
        # consume the global RNG that dropout draws from
        generator=torch.Generator().manual_seed(seed),
        persistent_workers=num_workers > 0,
    )


def val_loader(
    accelerator: Accelerator,
    val_ds: datasets.Dataset,
    *,
    batch_size: int,
    image_mean: Sequence[float],
    image_std: Sequence[float],
    num_workers: int = 0,
    skip_bad_samples: bool = False,
) -> DataLoader:
    """This process's shard of ``val_ds``, normalised, at original size."""
    samples = with_transforms(val_ds, eval_transform(image_mean, image_std), skip_bad_samples)
    return shard_loader(samples, accelerator, batch_size, num_workers)


def training_loaders(
    accelerator: Accelerator,
    training: TrainingArguments,
    train_ds: datasets.Dataset,
    val_ds: datasets.Dataset | None,
    image_mean: Sequence[float],
    image_std: Sequence[float],
) -> tuple[DataLoader, DataLoader | None]:
    """:func:`train_loader` and :func:`val_loader` as ``training`` configures them (its crop,
    scale range and seed filled in by the recipe), normalised with the model's
    ``image_mean``/``image_std`` (no val loader when there is nothing to score: ``val_ds``
    None)."""
    common = dict(
        image_mean=image_mean,
        image_std=image_std,
        num_workers=training.num_workers,
        skip_bad_samples=training.skip_bad_samples,
    )
    return (
        train_loader(
            train_ds,
            batch_size=training.per_device_train_batch_size,
            crop_size=training.crop_size,
            scale_range=training.scale_range,
            seed=training.seed,
            hold_decoded=training.hold_decoded,
            **common,
        ),
        None
        if val_ds is None
        else val_loader(
            accelerator, val_ds, batch_size=training.per_device_eval_batch_size, **common
        ),
    )

"""Joint image/mask transforms (section IV.1) and the collate that batches them.

The paper's training transform: random rescale so that the image's long side is in [321, 481],
random 321 x 321 crop (the image padded with the mean colour, the mask with 255), horizontal
flip, ImageNet normalisation. Evaluation keeps the original size. Both run torchvision's v2
kernels (nearest-neighbour for masks) on each sample as it is read (:class:`TransformedSamples`).
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import Dataset
from torchvision.transforms.v2 import functional as TF

from ..labels import IGNORE_INDEX
from ..normalization import IMAGENET_MEAN, IMAGENET_STD
from .decoding import DataError, decode_sample
from .schema import class_names, multi_hot

logger = logging.getLogger(__name__)


class TrainAugmentation:
    """The paper's training augmentation (section IV.1), joint on image and mask: the long side
    rescaled to a uniform random integer in ``scale_range`` (bilinear with antialiasing for the
    image, nearest for the mask), a random ``crop_size`` square crop (the image padded first
    where it is smaller, with the mean colour; the mask with 255), a horizontal flip with
    probability 1/2, the image scaled to [0, 1] and normalised with ``mean``/``std``.

    ``augmentation(image, mask)``: ``image`` (3, H, W) uint8, ``mask`` (H, W) uint8 ->
    ``pixel_values`` (3, crop, crop) float32, ``mask`` (crop, crop) uint8. The parameters are
    drawn from torch's default generator in the order of torchvision's v2 composition of
    resize, ``RandomCrop(pad_if_needed=True)`` and ``RandomHorizontalFlip`` (the long side; the
    crop's top and left where the image is larger than the crop; the flip) and applied with
    v2's own kernels, so the two give the same samples; calling the kernels directly skips v2's
    per-transform dispatch, most of a small image's cost."""

    def __init__(
        self,
        crop_size: int = 321,
        scale_range: tuple[int, int] = (321, 481),
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
    ) -> None:
        lo, hi = scale_range
        if not 0 < lo <= hi:
            raise ValueError(f"scale_range: need 0 < min <= max, got ({lo}, {hi})")
        if crop_size < 1:
            raise ValueError(f"crop_size: must be >= 1, got {crop_size}")
        self.crop_size, self.scale_range = crop_size, (lo, hi)
        self.mean, self.std = list(mean), list(std)
        self.fill = [float(round(255 * m)) for m in mean]

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image, mask = image.as_subclass(torch.Tensor), mask.as_subclass(torch.Tensor)
        long_side = int(torch.randint(self.scale_range[0], self.scale_range[1] + 1, ()))
        image = TF.resize_image(image, size=None, max_size=long_side, antialias=True)
        mask = TF.resize_mask(mask, size=None, max_size=long_side)
        h, w = image.shape[-2:]
        c = self.crop_size
        pad_h, pad_w = max(c - h, 0), max(c - w, 0)  # v2 pads both sides by the shortfall
        if pad_h or pad_w:
            padding = [pad_w, pad_h, pad_w, pad_h]
            image = TF.pad_image(image, padding, fill=self.fill)
            mask = TF.pad_mask(mask, padding, fill=IGNORE_INDEX)
            h, w = h + 2 * pad_h, w + 2 * pad_w
        top = int(torch.randint(0, h - c + 1, ())) if h > c else 0
        left = int(torch.randint(0, w - c + 1, ())) if w > c else 0
        if h > c or w > c:
            image = TF.crop_image(image, top, left, c, c)
            mask = TF.crop_mask(mask, top, left, c, c)
        if torch.rand(1) < 0.5:
            image, mask = TF.horizontal_flip_image(image), TF.horizontal_flip_mask(mask)
        return normalized(image, self.mean, self.std), mask


class EvalNormalization:
    """Evaluation's transform: every image at its original size, scaled to [0, 1] and
    normalised with ``mean``/``std``; the mask unchanged. Called as :class:`TrainAugmentation`."""

    def __init__(self, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
        self.mean, self.std = list(mean), list(std)

    def __call__(
        self, image: torch.Tensor, mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return normalized(image.as_subclass(torch.Tensor), self.mean, self.std), mask.as_subclass(
            torch.Tensor
        )


def normalized(image: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    """uint8 (3, H, W) -> float32 in [0, 1] -> ``(x - mean) / std`` per channel."""
    return TF.normalize_image(TF.to_dtype_image(image, torch.float32, scale=True), mean, std)


def train_transform(
    crop_size: int = 321,
    scale_range: tuple[int, int] = (321, 481),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> TrainAugmentation:
    """The paper's training augmentation (section IV.1), joint on image and mask."""
    return TrainAugmentation(crop_size, tuple(scale_range), mean, std)


def eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> EvalNormalization:
    """Normalisation only: evaluation sees every image at its original size."""
    return EvalNormalization(mean, std)


class TransformedSamples(Dataset):
    """``ds`` (the schema) decoded and transformed on access, sample by sample:
    ``samples[i]`` decodes sample ``i`` with the checks of :mod:`agen_hf.data.decoding`,
    applies ``transform`` jointly to image and mask, and returns ``id``, ``pixel_values``
    (3, H, W) float, ``mask`` (H, W) int64 (all 255 when the sample has none), ``labels`` (C,)
    float, the multi-hot target of eq. 11 over the dataset's ``num_classes``, and ``error``.
    A bad sample (a mask value above C included) raises :class:`DataError`, or with
    ``skip_bad_samples`` is logged, counted in ``self.skipped`` and returned with
    ``pixel_values`` None and its problem in ``error`` (the collate drops it).

    ``hold_decoded``: each sample's decoded image and mask (uint8 tensors) are kept in memory
    after its first access, so that later epochs skip reading and decoding (a bad sample's
    problem is kept too, logged once). The samples are the same; memory grows to
    ``3 H W + H W`` bytes a sample (10,000 64 px images: 164 MB; VOC train_aug: ~8 GB), in
    every loader worker that reads them."""

    def __init__(
        self,
        ds: datasets.Dataset,
        transform,
        skip_bad_samples: bool = False,
        hold_decoded: bool = False,
    ) -> None:
        self.raw = ds.cast_column("image", datasets.Image(decode=False))
        if "mask" in ds.column_names:
            self.raw = self.raw.cast_column("mask", datasets.Image(decode=False))
        self.transform = transform
        self.num_classes = len(class_names(ds))
        self.skip_bad_samples = skip_bad_samples
        self.skipped = 0
        self.held: dict[int, tuple] | None = {} if hold_decoded else None

    def __len__(self) -> int:
        return len(self.raw)

    def decoded(self, index: int) -> tuple:
        """``(id, image (3, H, W) uint8 or None, mask (H, W) uint8, labels, error)``."""
        if self.held is not None and index in self.held:
            return self.held[index]
        row = self.raw[index]
        sample_id = row.get("id", str(index))
        labels = torch.from_numpy(multi_hot(row["labels"], self.num_classes))
        try:
            img, mask = decode_sample(row["image"], row.get("mask"), self.num_classes)
        except DataError as e:
            if not self.skip_bad_samples:
                raise
            self.skipped += 1
            logger.warning(
                "skipped bad sample %s (%s); %d skipped so far", sample_id, e, self.skipped
            )
            out = (sample_id, None, None, labels, str(e))
        else:
            image = TF.pil_to_tensor(img.convert("RGB"))
            if mask is None:
                mask = np.full((img.height, img.width), IGNORE_INDEX, dtype=np.uint8)
            out = (sample_id, image, torch.from_numpy(np.ascontiguousarray(mask)), labels, None)
        if self.held is not None:
            self.held[index] = out
        return out

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample_id, image, mask, labels, error = self.decoded(index)
        pixel_values = None
        if image is not None:
            pixel_values, mask = self.transform(image, mask)
            mask = mask.long()
        return {
            "id": sample_id,
            "pixel_values": pixel_values,
            "mask": mask,
            "labels": labels,
            "error": error,
        }


def with_transforms(
    ds: datasets.Dataset,
    transform,
    skip_bad_samples: bool = False,
    hold_decoded: bool = False,
) -> TransformedSamples:
    """``ds`` (the schema) decoded and transformed on access (:class:`TransformedSamples`)."""
    return TransformedSamples(ds, transform, skip_bad_samples, hold_decoded)


def collate(samples: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Batch samples of any sizes: images padded bottom/right with 0 (the mean after
    normalisation), masks with 255, ``valid`` (B, H, W) marks real pixels and ``sizes`` (B, 2)
    the original (H, W), ``replaced`` the ids of bad samples a training sample stands in for
    (:class:`agen_hf.engine.sampling.SeededSamples`). Skipped (None) samples are dropped; None
    if none is left."""
    samples = [s for s in samples if s["pixel_values"] is not None]
    if not samples:
        return None
    sizes = torch.tensor([s["pixel_values"].shape[-2:] for s in samples])
    h, w = sizes.max(dim=0).values.tolist()
    pixel_values, masks, valid = [], [], []
    for s in samples:
        ph, pw = h - s["pixel_values"].shape[-2], w - s["pixel_values"].shape[-1]
        if not (ph or pw):  # a training crop, the batch's size: nothing to pad
            pixel_values.append(s["pixel_values"])
            masks.append(s["mask"])
            valid.append(torch.ones(h, w, dtype=torch.bool))
            continue
        pixel_values.append(F.pad(s["pixel_values"], (0, pw, 0, ph)))
        masks.append(F.pad(s["mask"], (0, pw, 0, ph), value=IGNORE_INDEX))
        v = torch.zeros(h, w, dtype=torch.bool)
        v[: h - ph, : w - pw] = True
        valid.append(v)
    return {
        "pixel_values": torch.stack(pixel_values),
        "labels": torch.stack([s["labels"] for s in samples]),
        "mask": torch.stack(masks),
        "valid": torch.stack(valid),
        "sizes": sizes,
        "ids": [s["id"] for s in samples],
        "replaced": [s["replaced"] for s in samples if s.get("replaced") is not None],
    }

"""Joint image/mask transforms (section IV.1) and the collate that batches them.

The paper's training transform: random rescale so that the image's long side is in [321, 481],
random 321 x 321 crop (the image padded with the mean colour, the mask with 255), horizontal
flip, ImageNet normalisation. Evaluation keeps the original size. Both run on
``torchvision.transforms.v2`` with ``tv_tensors.Mask`` (nearest-neighbour for masks), lazily,
through ``Dataset.with_transform``.
"""

from __future__ import annotations

import logging
from typing import Any

import datasets
import numpy as np
import torch
from torch.nn import functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from ..labels import IGNORE_INDEX
from ..normalization import IMAGENET_MEAN, IMAGENET_STD
from .decoding import DataError, decode_sample
from .schema import class_names, multi_hot

logger = logging.getLogger(__name__)


class RandomLongSideResize(v2.Transform):
    """Resize so that the long side is a uniform random integer in [min_size, max_size]."""

    def __init__(self, min_size: int, max_size: int) -> None:
        super().__init__()
        if not 0 < min_size <= max_size:
            raise ValueError(f"scale_range: need 0 < min <= max, got ({min_size}, {max_size})")
        self.min_size, self.max_size = min_size, max_size

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"long_side": int(torch.randint(self.min_size, self.max_size + 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        return self._call_kernel(
            TF.resize, inpt, size=None, max_size=params["long_side"], antialias=True
        )


def train_transform(
    crop_size: int = 321,
    scale_range: tuple[int, int] = (321, 481),
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
) -> v2.Compose:
    """The paper's training augmentation (section IV.1), joint on image and mask."""
    fill = {tv_tensors.Image: tuple(round(255 * m) for m in mean), tv_tensors.Mask: IGNORE_INDEX}
    return v2.Compose(
        [
            RandomLongSideResize(*scale_range),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std),
        ]
    )


def eval_transform(mean=IMAGENET_MEAN, std=IMAGENET_STD) -> v2.Compose:
    """Normalisation only: evaluation sees every image at its original size."""
    return v2.Compose(
        [
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std),
        ]
    )


class SampleTransform:
    """Batch function for ``Dataset.with_transform``: decodes each sample with the checks of
    :mod:`agen_hf.data.decoding`, applies ``transform`` jointly to image and mask, and returns
    ``pixel_values`` (3, H, W) float, ``mask`` (H, W) int64 (all 255 when the sample has
    none) and ``labels`` (C,) float, the multi-hot target of eq. 11 over the dataset's
    ``num_classes``. A bad sample (a mask value above C included) raises :class:`DataError`,
    or with ``skip_bad_samples`` is logged, counted in ``self.skipped`` and returned with
    ``pixel_values`` None and its problem in ``error`` (the collate drops it)."""

    def __init__(
        self, transform: v2.Transform, num_classes: int, skip_bad_samples: bool = False
    ) -> None:
        self.transform = transform
        self.num_classes = num_classes
        self.skip_bad_samples = skip_bad_samples
        self.skipped = 0

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        out = {"id": [], "pixel_values": [], "mask": [], "labels": [], "error": []}
        for i in range(len(batch["image"])):
            sample_id = batch["id"][i] if "id" in batch else str(i)
            try:
                img, mask = decode_sample(batch["image"][i], batch["mask"][i], self.num_classes)
            except DataError as e:
                if not self.skip_bad_samples:
                    raise
                self.skipped += 1
                logger.warning(
                    "skipped bad sample %s (%s); %d skipped so far", sample_id, e, self.skipped
                )
                pixel_values = mask_t = None
                error = str(e)
            else:
                error = None
                image = tv_tensors.Image(TF.pil_to_tensor(img.convert("RGB")))
                if mask is None:
                    mask = np.full((img.height, img.width), IGNORE_INDEX, dtype=np.uint8)
                pixel_values, mask_t = self.transform(
                    image, tv_tensors.Mask(torch.from_numpy(np.ascontiguousarray(mask)))
                )
                pixel_values = pixel_values.as_subclass(torch.Tensor)
                mask_t = mask_t.as_subclass(torch.Tensor).long()
            out["id"].append(sample_id)
            out["pixel_values"].append(pixel_values)
            out["mask"].append(mask_t)
            out["labels"].append(torch.from_numpy(multi_hot(batch["labels"][i], self.num_classes)))
            out["error"].append(error)
        return out


def with_transforms(
    ds: datasets.Dataset, transform: v2.Transform, skip_bad_samples: bool = False
) -> datasets.Dataset:
    """``ds`` (the schema) decoded and transformed lazily, sample by sample, on access."""
    raw = ds.cast_column("image", datasets.Image(decode=False)).cast_column(
        "mask", datasets.Image(decode=False)
    )
    return raw.with_transform(SampleTransform(transform, len(class_names(ds)), skip_bad_samples))


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

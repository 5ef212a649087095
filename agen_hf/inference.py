"""Running a segmentation model on images: :func:`segmentation_probabilities` (multi-scale +
flip test-time augmentation, the softmax averaged over every pass as the WSSS literature
evaluates: PSA, RRM), :class:`SegmentationStream` (class maps at each image's original size for
a stream of images, with the dense CRF over a process pool running while the network goes on:
what ``recipes/predict.py`` and ``recipes/make_pseudo_labels.py`` share) and :func:`segment`
(images in, class maps out, on top of the stream)."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any, Sequence

import numpy as np
import torch
from torch.nn import functional as F

from .crf import CrfPool
from .image_processing import AgenImageProcessor, pad_to_multiple, rgb_array, upsample_argmax


def check_scales(scales: Sequence[float]) -> tuple[float, ...]:
    """``scales`` as a tuple of floats; a ``ValueError`` unless one or more, all positive."""
    scales = tuple(float(s) for s in scales)
    if not scales or min(scales) <= 0:
        raise ValueError(f"scales: need one or more positive scales, got {scales}")
    return scales


@torch.no_grad()
def segmentation_probabilities(
    model,
    pixel_values: torch.Tensor,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    size_divisor: int = 8,
) -> torch.Tensor:
    """Softmax probabilities (B, K, H, W) at the size of ``pixel_values`` (B, 3, H, W),
    averaged over ``scales`` x (identity, horizontal flip if ``flip``). Each pass is resized
    (bilinear), padded to ``size_divisor``, run as ``model(x, segmentation_only=True).logits``,
    its logits upsampled to the padded size and cropped, their softmax brought back to (H, W)."""
    scales = check_scales(scales)
    b, _, h, w = pixel_values.shape
    total = None
    for scale in scales:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        x = (
            pixel_values
            if size == (h, w)
            else F.interpolate(pixel_values, size=size, mode="bilinear", align_corners=False)
        )
        if flip:
            x = torch.cat([x, x.flip(-1)])
        padded = pad_to_multiple(x, size_divisor)
        logits = model(padded, segmentation_only=True).logits.float()
        logits = F.interpolate(
            logits, size=padded.shape[-2:], mode="bilinear", align_corners=False
        )[..., : size[0], : size[1]]
        probs = logits.softmax(dim=1)
        if flip:
            probs = probs[:b] + probs[b:].flip(-1)
        if size != (h, w):
            probs = F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
        total = probs if total is None else total + probs
    return total / (len(scales) * (2 if flip else 1))


class SegmentationStream:
    """``submit(rgb, tag)`` segments one (H, W, 3) uint8 image and returns the results that
    are finished — ``(tag, rgb, label_map)`` with the label map (H, W) uint8, in submission
    order (at once without a CRF; when the pool delivers with one). ``finish()`` returns the
    rest.

    ``scales``/``flip``: the test-time augmentation of :func:`segmentation_probabilities`.
    ``allowed`` restricts an image's prediction to some classes (background always allowed):
    the image-level labels when segmenting training images for pseudo ground truth.
    """

    def __init__(
        self,
        model,
        processor: AgenImageProcessor,
        crf: CrfPool | None = None,
        autocast=None,
        scales: Sequence[float] = (1.0,),
        flip: bool = False,
    ) -> None:
        self.model = model
        self.processor = processor
        self.crf = crf
        self.autocast = autocast or nullcontext
        self.scales = check_scales(scales)
        self.flip = flip
        self.device = next(model.parameters()).device

    def probabilities(self, rgb: np.ndarray, allowed: np.ndarray | None = None) -> torch.Tensor:
        """Class probabilities (C+1, h, w) at the size the network saw (``max_size``)."""
        pixel_values = self.processor.pad(self.processor.normalize(rgb)).to(self.device)
        h, w = self.processor.resized_size(*rgb.shape[:2])
        with self.autocast():
            probs = segmentation_probabilities(
                self.model, pixel_values, self.scales, self.flip, self.processor.size_divisor
            )
        probs = probs[0, :, :h, :w].float().cpu()
        if allowed is not None:
            keep = torch.zeros(probs.shape[0], dtype=torch.bool)
            keep[0] = True
            keep[torch.as_tensor(np.asarray(allowed, dtype=np.int64))] = True
            probs = probs * keep[:, None, None]
        return probs

    def submit(
        self, rgb: np.ndarray, tag: Any = None, allowed: np.ndarray | None = None
    ) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        probs = self.probabilities(rgb, allowed)
        size = rgb.shape[:2]
        label_map = upsample_argmax(probs, size)
        if self.crf is None:
            return [(tag, rgb, label_map.to(torch.uint8).numpy())]
        done = self.crf.refine(
            rgb,
            label_map,
            lambda classes: F.interpolate(
                probs[None, torch.as_tensor(classes)],
                size=size,
                mode="bilinear",
                align_corners=False,
            )[0],
            tag=(tag, rgb),
        )
        return [(t, image, refined) for (t, image), refined in done]

    def finish(self) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        if self.crf is None:
            return []
        return [(t, image, refined) for (t, image), refined in self.crf.finish()]


def segment(
    model,
    images,
    processor: AgenImageProcessor | None = None,
    scales: Sequence[float] = (1.0,),
    flip: bool = False,
    crf: CrfPool | None = None,
):
    """Class-index maps (H, W) uint8 at each image's original (upright) size, 0 = background:
    one image in, one map out; a list in, a list out. Images are anything
    :func:`agen_hf.image_processing.rgb_array` takes and go through the network one at a time
    (:class:`SegmentationStream`), with ``scales`` x ``flip`` test-time augmentation and the
    dense CRF of ``crf`` when given. ``processor`` defaults to the model config's
    normalisation with the processor's defaults (``max_size`` 1024)."""
    single = not isinstance(images, (list, tuple))
    items = [images] if single else list(images)
    if processor is None:
        processor = AgenImageProcessor(
            image_mean=model.config.image_mean, image_std=model.config.image_std
        )
    stream = SegmentationStream(model, processor, crf, scales=scales, flip=flip)
    done = []
    for i, image in enumerate(items):
        done += stream.submit(rgb_array(image, f"image {i}"), tag=i)
    done += stream.finish()
    maps = [label_map for _, _, label_map in done]
    return maps[0] if single else maps


def as_is(item: dict) -> dict:
    """A ``DataLoader`` collate for one item at a time that keeps numpy images as they are (the
    default would turn them into tensors)."""
    return item

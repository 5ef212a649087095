"""Segmenting a stream of images at their original size, with the dense CRF over a process
pool running while the network goes on: what ``recipes/predict.py`` and
``recipes/make_pseudo_labels.py`` share."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from .crf import CrfPool, present_classes
from .image_processing import AgenImageProcessor, upsample_argmax


class SegmentationStream:
    """``submit(rgb, tag)`` segments one (H, W, 3) uint8 image and returns the results that
    are finished — ``(tag, rgb, labels)`` with labels (H, W) uint8, in submission order (at
    once without a CRF; when the pool delivers with one). ``finish()`` returns the rest.

    ``allowed`` restricts an image's prediction to some classes (background always allowed):
    the image-level labels when segmenting training images for pseudo ground truth.
    """

    def __init__(self, model, processor: AgenImageProcessor, crf: CrfPool | None = None,
                 autocast=None) -> None:
        self.model = model
        self.processor = processor
        self.crf = crf
        self.autocast = autocast or nullcontext
        self.device = next(model.parameters()).device

    def probabilities(self, rgb: np.ndarray, allowed: np.ndarray | None = None) -> torch.Tensor:
        """Class probabilities (C+1, h, w) at the size the network saw (``max_size``)."""
        pixel_values = self.processor.pad(self.processor.normalize(rgb)).to(self.device)
        h, w = self.processor.resized_size(*rgb.shape[:2])
        with self.autocast():
            probs = self.processor.predict_probabilities(self.model, pixel_values)
        probs = probs[0, :, :h, :w].float().cpu()
        if allowed is not None:
            keep = torch.zeros(probs.shape[0], dtype=torch.bool)
            keep[0] = True
            keep[torch.as_tensor(np.asarray(allowed, dtype=np.int64))] = True
            probs = probs * keep[:, None, None]
        return probs

    def submit(self, rgb: np.ndarray, tag: Any = None,
               allowed: np.ndarray | None = None) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        probs = self.probabilities(rgb, allowed)
        size = rgb.shape[:2]
        labels = upsample_argmax(probs, size)
        if self.crf is None:
            return [(tag, rgb, labels.to(torch.uint8).numpy())]
        classes = present_classes(labels)
        full = F.interpolate(probs[None, torch.as_tensor(classes)], size=size, mode="bilinear",
                             align_corners=False)[0]
        done = self.crf.submit(rgb, full, classes, tag=(tag, rgb))
        return [(t, image, refined) for (t, image), refined in done]

    def finish(self) -> list[tuple[Any, np.ndarray, np.ndarray]]:
        if self.crf is None:
            return []
        return [(t, image, refined) for (t, image), refined in self.crf.finish()]


def as_is(item: dict) -> dict:
    """A ``DataLoader`` collate for one item at a time that keeps numpy images as they are (the
    default would turn them into tensors)."""
    return item


def save_image_atomic(image: Image.Image, path: Path, **save_kwargs) -> None:
    """Write to a temporary name, then rename: an interrupted run never leaves half an image.
    The format follows the suffix (``.png``, ``.jpg``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    image.save(tmp, format=Image.registered_extensions()[path.suffix.lower()], **save_kwargs)
    os.replace(tmp, path)

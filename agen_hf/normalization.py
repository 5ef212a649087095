"""The ImageNet statistics every backbone was trained with, and the normalisation to and from
RGB that training, evaluation, the boundary loss's CRF and the image processor all share. The
models' configs hold the values (``image_mean``/``image_std``); these are their defaults."""

from __future__ import annotations

from typing import Sequence

import torch

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _stats(values: Sequence[float], like: torch.Tensor) -> torch.Tensor:
    return torch.as_tensor(values, dtype=like.dtype, device=like.device).view(-1, 1, 1)


def normalize(
    rgb: torch.Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> torch.Tensor:
    """RGB in [0, 1], (..., 3, H, W) -> ``(rgb - mean) / std``."""
    return (rgb - _stats(mean, rgb)) / _stats(std, rgb)


def unnormalize(
    pixel_values: torch.Tensor,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> torch.Tensor:
    """Normalised (..., 3, H, W) -> RGB in 0..255 (float): the inverse of :func:`normalize`
    times 255."""
    return (pixel_values * _stats(std, pixel_values) + _stats(mean, pixel_values)) * 255.0

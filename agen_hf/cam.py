"""Class scores, class activation maps and pseudo labels (eq. 1-4, section IV.1). Pure functions
on tensors.

Class index 0 is background; foreground class c (0-based among the C classes) is label c + 1.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from .upsampling import upsample_bilinear

_EPS = 1e-5


def class_scores(class_maps: torch.Tensor, lse_r: float = 0.0) -> torch.Tensor:
    """Eq. 1's class scores (B, C) from the class-aware maps ``F_c`` (B, C, h, w).

    ``lse_r = 0``: the paper's ``GAP(F_c)``, in the maps' dtype. ``lse_r = r > 0``: log-sum-exp
    pooling ``(1/r) log((1/hw) sum_u exp(r F_c,u))`` in float32, a from-scratch choice: it is
    GAP as r -> 0 and ``max_u F_c,u`` as r -> inf, equal to GAP on a constant map and never
    below it, so the score (and its gradient) leans on the map's strongest positions.
    """
    if lse_r == 0:
        return class_maps.mean(dim=(2, 3))
    flat = class_maps.float().flatten(2)
    return (torch.logsumexp(lse_r * flat, dim=2) - math.log(flat.shape[2])) / lse_r


def class_activation_maps(class_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. 2-3: ``M_c^f = US(ReLU(F_c)) / max(US(ReLU(F_c)))``.

    class_maps: ``F_c`` (B, C, h, w). Returns (B, C, *size) in [0, 1], each map divided by its
    own maximum (an all-zero map stays zero). ``US`` is bilinear
    (:func:`agen_hf.upsampling.upsample_bilinear`).
    """
    maps = upsample_bilinear(F.relu(class_maps), size)
    peak = maps.amax(dim=(2, 3), keepdim=True)
    return maps / (peak + _EPS)


def background_map(fg: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4: ``M^b = (1 - max_c M_c^f) ** alpha``. fg (B, C, H, W) -> (B, 1, H, W)."""
    return (1.0 - fg.amax(dim=1, keepdim=True)).clamp_min(0.0) ** alpha


def _image_class_maps(
    class_maps: torch.Tensor, image_labels: torch.Tensor, size: tuple[int, int], alpha: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """The background map (eq. 4) and the CAMs (eq. 2-3) of each image's own classes:
    (B, 1 + K, *size) with K the most classes any image of the batch has, and (B, 1 + K) the
    label (0 background, c + 1 for class c) of each of those maps.

    Eq. 2-4 zero the maps of the classes an image does not have, so they can neither exceed a
    threshold >= 0 nor win a maximum; leaving them out gives the same seeds while upsampling K
    of the C maps (a VOC image has 1.5 classes of 20). An image with fewer than K classes is
    padded with zero maps of classes it does not have, which never win either."""
    if image_labels.shape != class_maps.shape[:2]:
        raise ValueError(
            f"pseudo labels: image_labels has shape {tuple(image_labels.shape)}, "
            f"expected {tuple(class_maps.shape[:2])}"
        )
    present = image_labels != 0
    k = max(int(present.sum(dim=1).max()), 1) if present.numel() else 1
    order = torch.argsort((~present).to(torch.uint8), dim=1, stable=True)[:, :k]  # (B, K)
    weight = image_labels.gather(1, order).float()  # eq. 2's image label (0 for padding)
    h, w = class_maps.shape[-2:]
    picked = class_maps.detach().float().gather(1, order[:, :, None, None].expand(-1, -1, h, w))
    fg = class_activation_maps(picked, size) * weight[:, :, None, None]
    maps = torch.cat([background_map(fg, alpha), fg], dim=1)
    names = torch.cat([torch.zeros_like(order[:, :1]), order + 1], dim=1)
    return maps, names


def _labels_of(index: torch.Tensor, names: torch.Tensor) -> torch.Tensor:
    """index (B, H, W) into each image's maps -> their labels via names (B, 1 + K)."""
    return names.gather(1, index.flatten(1)).view_as(index)


def pseudo_labels(
    class_maps: torch.Tensor,
    image_labels: torch.Tensor,
    size: tuple[int, int],
    alpha: float,
    threshold: float,
    ignore_index: int = 255,
) -> torch.Tensor:
    """Seeds ``H`` from class-aware maps (eq. 2-4 and section IV.1).

    class_maps: ``F_c`` (B, C, h, w); image_labels: multi-hot (B, C). Maps of classes absent
    from the image label are zeroed, the background map is appended in front (index 0), and a
    pixel whose value exceeds ``threshold`` in exactly one of the C+1 maps takes that index;
    pixels above it in none or in several are ``ignore_index``. Returns (B, *size) int64.
    Carries no gradient. Computed over each image's own classes (:func:`_image_class_maps`),
    which is exact for ``threshold >= 0``.
    """
    if threshold < 0:
        raise ValueError(f"pseudo_labels: threshold must be >= 0, got {threshold}")
    with torch.no_grad():
        maps, names = _image_class_maps(class_maps, image_labels, size, alpha)
        # where exactly one map exceeds the threshold it is also the largest, so the index of
        # the maximum names it (``max`` is 3x faster than ``argmax`` over dim 1 on a CPU)
        above = (maps > threshold).sum(dim=1, dtype=torch.uint8)
        seeds = torch.where(above == 1, _labels_of(maps.max(dim=1).indices, names), ignore_index)
    return seeds


def dense_pseudo_labels(
    class_maps: torch.Tensor, image_labels: torch.Tensor, size: tuple[int, int], alpha: float
) -> torch.Tensor:
    """Every pixel labelled: the argmax over the background map (eq. 4) and the CAMs (eq. 2-3)
    of the image's classes. class_maps (B, C, h, w), image_labels (B, C) -> (B, *size) int64
    with 0 background and c + 1 for class c. How good a head's maps are, seeds aside."""
    with torch.no_grad():
        maps, names = _image_class_maps(class_maps, image_labels, size, alpha)
        return _labels_of(maps.argmax(dim=1), names)

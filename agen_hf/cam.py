"""Class activation maps and pseudo labels (eq. 2-4, section IV.1). Pure functions on tensors.

Class index 0 is background; foreground class c (0-based among the C classes) is label c + 1.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

_EPS = 1e-5


def class_activation_maps(class_maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Eq. 2-3: ``M_c^f = US(ReLU(F_c)) / max(US(ReLU(F_c)))``.

    class_maps: ``F_c`` (B, C, h, w). Returns (B, C, *size) in [0, 1], each map divided by its
    own maximum (an all-zero map stays zero).
    """
    maps = F.interpolate(F.relu(class_maps), size=tuple(size), mode="bilinear",
                         align_corners=False)
    peak = maps.amax(dim=(2, 3), keepdim=True)
    return maps / (peak + _EPS)


def background_map(fg: torch.Tensor, alpha: float) -> torch.Tensor:
    """Eq. 4: ``M^b = (1 - max_c M_c^f) ** alpha``. fg (B, C, H, W) -> (B, 1, H, W)."""
    return (1.0 - fg.amax(dim=1, keepdim=True)).clamp_min(0.0) ** alpha


def pseudo_labels(class_maps: torch.Tensor, image_labels: torch.Tensor, size: tuple[int, int],
                  alpha: float, threshold: float, ignore_index: int = 255) -> torch.Tensor:
    """Seeds ``H`` from class-aware maps (eq. 2-4 and section IV.1).

    class_maps: ``F_c`` (B, C, h, w); image_labels: multi-hot (B, C). Maps of classes absent
    from the image label are zeroed, the background map is appended in front (index 0), and a
    pixel whose value exceeds ``threshold`` in exactly one of the C+1 maps takes that index;
    pixels above it in none or in several are ``ignore_index``. Returns (B, *size) int64.
    Carries no gradient.
    """
    if image_labels.shape != class_maps.shape[:2]:
        raise ValueError(f"pseudo_labels: image_labels has shape {tuple(image_labels.shape)}, "
                         f"expected {tuple(class_maps.shape[:2])}")
    with torch.no_grad():
        fg = class_activation_maps(class_maps.detach().float(), size)
        fg = fg * image_labels.to(fg.dtype)[:, :, None, None]
        maps = torch.cat([background_map(fg, alpha), fg], dim=1)
        # where exactly one map exceeds the threshold it is also the largest, so the index of
        # the maximum names it (``max`` is 3x faster than ``argmax`` over dim 1 on a CPU)
        above = (maps > threshold).sum(dim=1, dtype=torch.uint8)
        seeds = torch.where(above == 1, maps.max(dim=1).indices, ignore_index)
    return seeds


def dense_pseudo_labels(class_maps: torch.Tensor, image_labels: torch.Tensor,
                        size: tuple[int, int], alpha: float) -> torch.Tensor:
    """Every pixel labelled: the argmax over the background map (eq. 4) and the CAMs (eq. 2-3)
    of the image's classes. class_maps (B, C, h, w), image_labels (B, C) -> (B, *size) int64
    with 0 background and c + 1 for class c. How good a head's maps are, seeds aside."""
    with torch.no_grad():
        fg = class_activation_maps(class_maps.detach().float(), size)
        fg = fg * image_labels.to(fg.dtype)[:, :, None, None]
        return torch.cat([background_map(fg, alpha), fg], dim=1).argmax(dim=1)

"""Bilinear resizing of maps and logits (the ``US`` of eq. 2, the upsampling of every head's
logits to the image in eq. 12-13) as two matrix products. Pure functions.

Bilinear interpolation is separable and linear: resizing (h, w) -> (H, W) is
``Y = U_H X U_W^T`` with ``U_H`` (H, h) and ``U_W`` (W, w) holding each output row's two
interpolation weights. The weights are PyTorch's ``align_corners=False`` rule (half-pixel
centres, source coordinate ``(i + 0.5) h / H - 0.5`` clamped at 0), so the result is
``F.interpolate(x, size, mode="bilinear", align_corners=False)`` up to float rounding. The
products run as GEMMs in the forward and in the backward, where ``upsample_bilinear2d``'s
backward is a scatter: at the quickstart's size (8^2 -> 64^2, 21 channels, batch 16) forward
+ backward take 1.5 ms against 3-10 ms (``bench/train_step.py --quickstart``).
"""

from __future__ import annotations

import functools

import torch


def interpolation_matrix(
    n_out: int,
    n_in: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """(n_out, n_in) weights of 1-D linear interpolation, ``align_corners=False``: output ``i``
    samples ``s = max((i + 0.5) * n_in / n_out - 0.5, 0)`` with weight ``1 - (s - floor s)``
    on ``floor s`` and ``s - floor s`` on ``min(floor s + 1, n_in - 1)``."""
    if n_out < 1 or n_in < 1:
        raise ValueError(f"interpolation_matrix: sizes must be >= 1, got {n_out} x {n_in}")
    src = ((torch.arange(n_out, dtype=torch.float64) + 0.5) * (n_in / n_out) - 0.5).clamp_min(0)
    lo = src.floor().long().clamp_max(n_in - 1)
    hi = (lo + 1).clamp_max(n_in - 1)
    frac = src - lo
    rows = torch.arange(n_out)
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    m.index_put_((rows, lo), 1 - frac, accumulate=True)
    m.index_put_((rows, hi), frac, accumulate=True)
    return m.to(device=device, dtype=dtype)


def upsample_bilinear(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``x`` (B, C, h, w) resized to ``size`` = (H, W), bilinear with ``align_corners=False``,
    computed in ``x``'s floating dtype (autocast does not lower it). Differentiable."""
    size = (int(size[0]), int(size[1]))
    if tuple(x.shape[-2:]) == size:
        return x
    if not x.is_floating_point():
        raise TypeError(f"upsample_bilinear: expected a floating tensor, got {x.dtype}")
    with torch.autocast(x.device.type, enabled=False):
        u_h = _cached_matrix(size[0], x.shape[-2], x.device, x.dtype)
        u_w = _cached_matrix(size[1], x.shape[-1], x.device, x.dtype)
        return torch.matmul(torch.matmul(u_h, x), u_w.t())


@functools.lru_cache(maxsize=128)
def _cached_matrix(n_out: int, n_in: int, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """The matrices a training run needs, built once per size, device and dtype (never
    modified): no host-to-device copy, which would wait for the GPU, in every step. Built
    outside inference mode, so that a matrix first made during evaluation can be saved for
    backward in the next training step."""
    with torch.inference_mode(False):
        return interpolation_matrix(n_out, n_in, device, dtype)

"""The context attention module, CoAM (Fig. 3, eq. 6-9): low-level class-aware maps enhanced
by attention to higher-level ones."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .upsampling import upsample_bilinear


class ContextAttention(nn.Module):
    """CoAM (eq. 6-9): enhances low-level class-aware maps with attention to higher-level ones.
    Eq. 5, its top-down accumulation (A -> AGM-5 -> AGM-4 -> AGM-3), is in
    :meth:`agen_hf.AgenModel.forward`.

    ``forward(low, high)``: ``high`` (B, C, h', w') is bilinearly resized to ``low`` (B, C, h, w);
    with N = h*w positions, ``a_ij = softmax_j(low_i . high_j)`` (eq. 6-7, no scaling), and the
    output is ``lambda * sum_j a_ij low_j + low`` (eq. 8-9). ``lambda`` (``self.weight``) is the
    only parameter and starts at 0, so a fresh CoAM is the identity.

    The attention runs through ``scaled_dot_product_attention`` with ``scale=1``: its fused
    kernels never materialise the N x N map, so memory grows as O(N). The C channels are
    zero-padded to a multiple of 8 for kernel eligibility (dot products are unchanged).
    """

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
        b, c, h, w = low.shape
        if high.shape[:2] != (b, c):
            raise ValueError(
                f"ContextAttention: high has shape {tuple(high.shape)}, expected "
                f"({b}, {c}, *, *) to match low"
            )
        if high.shape[-2:] != (h, w):
            high = upsample_bilinear(high, (h, w))
        pad = (-c) % 8
        q = F.pad(low.flatten(2).transpose(1, 2), (0, pad)).unsqueeze(1)  # (B, 1, N, C')
        k = F.pad(high.flatten(2).transpose(1, 2), (0, pad)).unsqueeze(1)
        attended = F.scaled_dot_product_attention(q, k, q, scale=1.0)
        attended = attended[..., :c].squeeze(1).transpose(1, 2).reshape(b, c, h, w)
        return self.weight * attended + low

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
    Maps in half precision (bf16 autocast) with at most :data:`EXPLICIT_MAX_POSITIONS`
    positions instead take :func:`explicit_attention`, in float32: faster there, and more
    exact. Float32 maps keep the fused kernel at every size, so float32 training is bit for
    bit what it was.
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
        q, k = low.flatten(2).transpose(1, 2), high.flatten(2).transpose(1, 2)  # (B, N, C)
        if low.dtype in (torch.bfloat16, torch.float16) and h * w <= EXPLICIT_MAX_POSITIONS:
            attended = explicit_attention(q, k).to(low.dtype)
        else:
            pad = (-c) % 8
            q, k = F.pad(q, (0, pad)).unsqueeze(1), F.pad(k, (0, pad)).unsqueeze(1)
            attended = F.scaled_dot_product_attention(q, k, q, scale=1.0)[..., :c].squeeze(1)
        return self.weight * attended.transpose(1, 2).reshape(b, c, h, w) + low


# Where float32 explicit products beat the fused kernel on bf16 maps (forward + backward of
# one CoAM, C = 20, batch 16, a 2-core AMD EPYC; BENCHMARKS.md): N = 64 (8^2): 0.28 against
# 2.0 ms; N = 256: 3.4-3.8 against 5.3 ms; the paper's stage 3 (N = 41^2 = 1681, batch 15):
# 390-410 against 123 ms, so the fused kernel from there on.
EXPLICIT_MAX_POSITIONS = 1024


def explicit_attention(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """Eq. 6-8's ``sum_j softmax_j(q_i . k_j) q_j`` for q, k (B, N, C), in float32 (autocast
    off): the dot products of eq. 6 are unscaled, so they reach the hundreds, where bfloat16's
    8-bit mantissa would move an attention weight by tens of percent."""
    with torch.autocast(q.device.type, enabled=False):
        q32 = q.float()
        weights = torch.bmm(q32, k.float().transpose(1, 2)).softmax(dim=-1)  # (B, N, N)
        return torch.bmm(weights, q32)

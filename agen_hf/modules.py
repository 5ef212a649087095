"""AGEN's two new modules: the attention guided module (AGM, Fig. 2) and the context attention
module (CoAM, Fig. 3, eq. 5-9)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .upsampling import upsample_bilinear


class ConvReLU(nn.Sequential):
    """3x3 convolution followed by ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1), nn.ReLU(inplace=True))


class AttentionGuidedModule(nn.Module):
    """AGM-n for every n in ``stages`` (Fig. 2).

    Branch C (classification) on the branch-A tap ``F^{A_n}``: a per-stage 3x3 conv to
    ``cls_channels`` (unifying the stages' widths), then a 3x3 conv and the class-aware 1x1 conv
    to C channels shared by all stages, giving ``F_c^{AGM-n}``; GAP + sigmoid give ``p^{AGM-n}``.

    Branch D (segmentation) on the branch-B tap ``F^{B_n}``: a per-stage 3x3 conv to
    ``seg_channels``, then a 3x3 conv and a 1x1 conv to C+1 channels shared by all stages,
    giving the logits of ``S^{AGM-n}``.
    """

    def __init__(
        self,
        stages: tuple[int, ...],
        channels_a: dict[int, int],
        channels_b: dict[int, int],
        num_classes: int,
        cls_channels: int,
        seg_channels: int,
        classifier_bias: bool = False,
    ) -> None:
        super().__init__()
        self.cls_adapters = nn.ModuleDict(
            {str(n): ConvReLU(channels_a[n], cls_channels) for n in stages}
        )
        self.cls_shared = nn.Sequential(
            ConvReLU(cls_channels, cls_channels),
            nn.Conv2d(cls_channels, num_classes, 1, bias=classifier_bias),
        )
        self.seg_adapters = nn.ModuleDict(
            {str(n): ConvReLU(channels_b[n], seg_channels) for n in stages}
        )
        self.seg_shared = nn.Sequential(
            ConvReLU(seg_channels, seg_channels), nn.Conv2d(seg_channels, num_classes + 1, 1)
        )

    def class_maps(self, stage: int, features_a: torch.Tensor) -> torch.Tensor:
        """Branch C: ``F^{A_n}`` (B, *, h, w) -> class-aware maps ``F_c`` (B, C, h, w)."""
        return self.cls_shared(self.cls_adapters[str(stage)](features_a))

    def segment(self, stage: int, features_b: torch.Tensor) -> torch.Tensor:
        """Branch D: ``F^{B_n}`` (B, *, h, w) -> segmentation logits (B, C+1, h, w)."""
        return self.seg_shared(self.seg_adapters[str(stage)](features_b))


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

"""The attention guided module, AGM (Fig. 2): on each chosen stage n, a classification branch
C on branch A's features and a segmentation branch D on branch B's, whose heads are shared by
every stage."""

from __future__ import annotations

import torch
from torch import nn


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

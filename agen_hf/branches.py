"""AGEN's two branches on any backbone (Fig. 1): a body (:mod:`agen_hf.backbones`) and its
role's head, whose layers are added to the body module so that the weights keep flat names
(the paper's branch A is ``conv3 ... pool5, fc6, fc7, classifier``, its branch B ``b3 ... bn7,
head``, as the published weight files and every saved AGEN name them).

* Branch A (classification): fc6 and fc7, 3x3 convolutions of ``fc_channels`` (fc6 dilated,
  DeepLab-LargeFOV's 12 at stride 8), ReLU, then the class-aware 1x1 convolution to the C
  maps ``F_c`` of eq. 1-2.
* Branch B (segmentation): RRM's head, a dilated 3x3 convolution (12 at stride 8), ReLU, and
  a 1x1 convolution to the C+1 logits.

The dilations are the paper's at output stride 8 and shrink with a coarser body (a stride-32
ConvNeXt's fc6 is dilated 3), so that the head sees the same share of the image."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .backbones import Backbone


def scaled_dilation(dilation: int, output_stride: int) -> int:
    """A head's dilation at ``output_stride`` for the paper's ``dilation`` at stride 8."""
    return max(1, dilation * 8 // output_stride)


class SegmentationHead(nn.Sequential):
    """RRM's head: 3x3 dilated conv, ReLU, 1x1 conv to C+1 logits."""

    def __init__(
        self, in_channels: int, channels: int, dilation: int, num_labels: int, bias: bool = False
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_labels, 1, bias=bias),
        )


def add_classification_head(body: Backbone, config) -> Backbone:
    """``body`` with branch A's head (``fc6``, ``fc7``, ``classifier``) added."""
    d = scaled_dilation(config.fc6_dilation, body.output_stride)
    body.fc6 = nn.Conv2d(body.out_channels, config.fc_channels, 3, padding=d, dilation=d)
    body.fc7 = nn.Conv2d(config.fc_channels, config.fc_channels, 3, padding=1)
    body.classifier = nn.Conv2d(
        config.fc_channels, config.num_classes, 1, bias=config.classifier_bias
    )
    return body


def class_maps(branch: Backbone, features: torch.Tensor) -> torch.Tensor:
    """Branch A's head: the body's features (B, *, h, w) -> ``F_c`` (B, C, h, w)."""
    x = F.relu(branch.fc6(features), inplace=True)
    x = F.relu(branch.fc7(x), inplace=True)
    return branch.classifier(x)


def add_segmentation_head(body: Backbone, config) -> Backbone:
    """``body`` with branch B's head (``head``) added."""
    body.head = SegmentationHead(
        body.out_channels,
        config.seg_head_channels,
        scaled_dilation(config.seg_head_dilation, body.output_stride),
        config.num_labels,
        config.classifier_bias,
    )
    return body


def segmentation_logits(branch: Backbone, features: torch.Tensor) -> torch.Tensor:
    """Branch B's head: the body's features (B, *, h, w) -> logits (B, C+1, h, w)."""
    return branch.head(features)

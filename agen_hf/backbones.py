"""Backbones of AGEN's two branches (section III.1, Fig. 1).

* :class:`SharedStem`: VGG16 conv1-conv2, shared by branch A and branch B. Output stride 2.
* :class:`DeepLabVGG16`: the rest of classification branch A, DeepLab-style (pool4/pool5 with
  stride 1, conv5 dilated), fc6/fc7 replaced by two 3x3 convolutions and a 1x1 class-aware
  convolution producing ``F_c``. Output stride 8.
* :class:`ResNet38`: the rest of segmentation branch B, the wide ResNet-38 of Wu et al. (the
  "model A" used by PSA, SEAM and RRM) from block b3 on, with RRM's segmentation head.

Both branches expose their stage outputs as ``{3: ..., 4: ..., 5: ...}`` (strides 4, 8, 8), the
taps that feed AGM-3/4/5. Module names follow the published weight files (VGG ``convN_M``;
ResNet-38 ``b4_1.conv_branch2a`` ...) so that ImageNet weights map by name.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .configuration_agen import AgenConfig


def max_pool(stride: int) -> nn.MaxPool2d:
    # DeepLab's 3x3 pooling: ceil(H / 2) at stride 2 (321 -> 161 -> 81 -> 41), size kept at 1.
    return nn.MaxPool2d(kernel_size=3, stride=stride, padding=1)


class VggBlock(nn.Sequential):
    """``depth`` 3x3 convolutions with ReLU (and batch norm before it for VGG16-BN), named
    ``conv{block}_{i}`` as in VGG16."""

    def __init__(
        self,
        block: int,
        in_channels: int,
        out_channels: int,
        depth: int,
        dilation: int = 1,
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        for i in range(1, depth + 1):
            self.add_module(
                f"conv{block}_{i}",
                nn.Conv2d(in_channels, out_channels, 3, padding=dilation, dilation=dilation),
            )
            if batch_norm:
                self.add_module(f"bn{block}_{i}", nn.BatchNorm2d(out_channels))
            self.add_module(f"relu{block}_{i}", nn.ReLU(inplace=True))
            in_channels = out_channels


class SharedStem(nn.Module):
    """VGG16 conv1 block, pool1, conv2 block: the layers branches A and B share. (B, 3, H, W)
    -> (B, vgg_channels[1], ceil(H/2), ceil(W/2))."""

    def __init__(self, config: AgenConfig) -> None:
        super().__init__()
        ch, depth, bn = config.vgg_channels, config.vgg_depths, config.vgg_batch_norm
        self.conv1 = VggBlock(1, 3, ch[0], depth[0], batch_norm=bn)
        self.pool1 = max_pool(2)
        self.conv2 = VggBlock(2, ch[0], ch[1], depth[1], batch_norm=bn)
        self.out_channels = ch[1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.pool1(self.conv1(pixel_values)))


class DeepLabVGG16(nn.Module):
    """Classification branch A after the stem: pool2, conv3, pool3, conv4, pool4 (stride 1),
    conv5 (dilated), pool5 (stride 1), fc6, fc7 (3x3, ``fc_channels``) and the class-aware 1x1
    ``classifier`` with C outputs whose maps are ``F_c`` of eq. 1-2."""

    def __init__(self, config: AgenConfig) -> None:
        super().__init__()
        ch, depth, bn = config.vgg_channels, config.vgg_depths, config.vgg_batch_norm
        self.pool2 = max_pool(2)
        self.conv3 = VggBlock(3, ch[1], ch[2], depth[2], batch_norm=bn)
        self.pool3 = max_pool(2)
        self.conv4 = VggBlock(4, ch[2], ch[3], depth[3], batch_norm=bn)
        self.pool4 = max_pool(1)
        self.conv5 = VggBlock(
            5, ch[3], ch[4], depth[4], dilation=config.vgg_stage5_dilation, batch_norm=bn
        )
        self.pool5 = max_pool(1)
        d = config.fc6_dilation
        self.fc6 = nn.Conv2d(ch[4], config.fc_channels, 3, padding=d, dilation=d)
        self.fc7 = nn.Conv2d(config.fc_channels, config.fc_channels, 3, padding=1)
        self.classifier = nn.Conv2d(
            config.fc_channels, config.num_classes, 1, bias=config.classifier_bias
        )
        self.stage_channels = {3: ch[2], 4: ch[3], 5: ch[4]}

    def forward(self, stem: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Returns the stage taps ``{3, 4, 5}`` and ``F_c`` (B, C, h, w), h = ceil(H / 8)."""
        f3 = self.conv3(self.pool2(stem))
        f4 = self.conv4(self.pool3(f3))
        f5 = self.conv5(self.pool4(f4))
        x = F.relu(self.fc6(self.pool5(f5)), inplace=True)
        x = F.relu(self.fc7(x), inplace=True)
        return {3: f3, 4: f4, 5: f5}, self.classifier(x)

    def pretrained_modules(self) -> list[nn.Module]:
        """The layers that ImageNet VGG16 weights initialise (fc6/fc7 are new: 3x3, not fc)."""
        return [self.conv3, self.conv4, self.conv5]


class ResidualUnit(nn.Module):
    """Pre-activation unit of ResNet-38 (Wu et al.): BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus an
    identity or 1x1 projection shortcut taken from the pre-activated input."""

    def __init__(
        self,
        in_channels: int,
        mid_channels: int,
        out_channels: int,
        stride: int = 1,
        first_dilation: int = 1,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.same_shape = in_channels == out_channels and stride == 1
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(
            in_channels,
            mid_channels,
            3,
            stride,
            padding=first_dilation,
            dilation=first_dilation,
            bias=False,
        )
        self.bn_branch2b1 = nn.BatchNorm2d(mid_channels)
        self.conv_branch2b1 = nn.Conv2d(
            mid_channels, out_channels, 3, padding=dilation, dilation=dilation, bias=False
        )
        if not self.same_shape:
            self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = x if self.same_shape else self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(F.relu(self.bn_branch2b1(y)))
        return shortcut + y


class BottleneckUnit(nn.Module):
    """Pre-activation bottleneck unit of ResNet-38 (blocks b6, b7): 1x1 -> 3x3 (dilated) -> 1x1
    with widths out/4, out/2, out, dropout before the last two convolutions."""

    def __init__(self, in_channels: int, out_channels: int, dilation: int, dropout: float) -> None:
        super().__init__()
        self.bn_branch2a = nn.BatchNorm2d(in_channels)
        self.conv_branch2a = nn.Conv2d(in_channels, out_channels // 4, 1, bias=False)
        self.bn_branch2b1 = nn.BatchNorm2d(out_channels // 4)
        self.dropout_2b1 = nn.Dropout2d(dropout)
        self.conv_branch2b1 = nn.Conv2d(
            out_channels // 4, out_channels // 2, 3, padding=dilation, dilation=dilation, bias=False
        )
        self.bn_branch2b2 = nn.BatchNorm2d(out_channels // 2)
        self.dropout_2b2 = nn.Dropout2d(dropout)
        self.conv_branch2b2 = nn.Conv2d(out_channels // 2, out_channels, 1, bias=False)
        self.conv_branch1 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn_branch2a(x))
        shortcut = self.conv_branch1(pre)
        y = self.conv_branch2a(pre)
        y = self.conv_branch2b1(self.dropout_2b1(F.relu(self.bn_branch2b1(y))))
        y = self.conv_branch2b2(self.dropout_2b2(F.relu(self.bn_branch2b2(y))))
        return shortcut + y


class SegmentationHead(nn.Sequential):
    """RRM's head on ResNet-38: 3x3 dilated conv, ReLU, 1x1 conv to C+1 logits."""

    def __init__(
        self, in_channels: int, channels: int, dilation: int, num_labels: int, bias: bool = False
    ) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation, bias=False),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, num_labels, 1, bias=bias),
        )


class ResNet38(nn.Module):
    """Segmentation branch B after the stem: ResNet-38 blocks b3 (stride 2), b4 (stride 2), b5
    (dilation 2), b6 and b7 (bottlenecks, dilation 4), final BN-ReLU, and the segmentation head.
    Stage taps: b3 (stride 4), b4 (stride 8), b5 (stride 8)."""

    def __init__(self, config: AgenConfig, in_channels: int) -> None:
        super().__init__()
        w3, w4, w5, w6, w7 = config.resnet_widths
        d3, d4, d5 = config.resnet_depths
        self._stages: dict[int, list[str]] = {}
        self._add_units(3, d3, in_channels, w3, w3, stride=2)
        self._add_units(4, d4, w3, w4, w4, stride=2)
        self._add_units(5, d5, w4, w5 // 2, w5, stride=1, dilation=2)
        self.b6 = BottleneckUnit(w5, w6, dilation=4, dropout=config.resnet_dropout[0])
        self.b7 = BottleneckUnit(w6, w7, dilation=4, dropout=config.resnet_dropout[1])
        self.bn7 = nn.BatchNorm2d(w7)
        self.head = SegmentationHead(
            w7,
            config.seg_head_channels,
            config.seg_head_dilation,
            config.num_labels,
            config.classifier_bias,
        )
        self.stage_channels = {3: w3, 4: w4, 5: w5}

    def _add_units(
        self, block: int, depth: int, in_ch: int, mid: int, out: int, stride: int, dilation: int = 1
    ) -> None:
        names = []
        for i in range(depth):
            name = f"b{block}" if i == 0 else f"b{block}_{i}"
            first_dilation = 1 if i == 0 else dilation
            self.add_module(
                name,
                ResidualUnit(
                    in_ch if i == 0 else out,
                    mid,
                    out,
                    stride if i == 0 else 1,
                    first_dilation,
                    dilation,
                ),
            )
            names.append(name)
        self._stages[block] = names

    def forward(self, stem: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        """Returns the stage taps ``{3, 4, 5}`` and the logits (B, C+1, h, w), h = ceil(H / 8)."""
        taps = {}
        x = stem
        for block, names in self._stages.items():
            for name in names:
                x = getattr(self, name)(x)
            taps[block] = x
        x = self.b7(self.b6(x))
        x = F.relu(self.bn7(x))
        return taps, self.head(x)

    def pretrained_modules(self) -> list[nn.Module]:
        """The layers that ImageNet ResNet-38 weights initialise (everything but the head)."""
        return [m for name, m in self.named_children() if name != "head"]

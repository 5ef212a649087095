"""ResNet-38, the wide ResNet of Wu et al. ("model A", as PSA, SEAM and RRM use it): the paper's
branch B. Its own stem is conv1a and the b2 units (stride 2); in the paper it follows VGG16's
conv1-conv2 instead (section III.1). The body is b3 (stride 2), b4 (stride 2), b5 (dilation
2), the bottlenecks b6 and b7 (dilation 4) and a final BN-ReLU: taps b3 (stride 4), b4 (8), b5
(8), features at stride 8. Unit names follow PSA's weight file (``b4_1.conv_branch2a`` ...)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .registry import Backbone, BackboneSpec, Stem, register
from .weight_files import load_resnet38_into

RESNET38_WIDTHS = (256, 512, 1024, 2048, 4096)
RESNET38_DEPTHS = (3, 6, 3)
RESNET38_DROPOUT = (0.3, 0.5)


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


def _config(config) -> tuple[tuple[int, ...], tuple[int, ...], tuple[float, ...]]:
    return (
        tuple(getattr(config, "resnet_widths", RESNET38_WIDTHS)),
        tuple(getattr(config, "resnet_depths", RESNET38_DEPTHS)),
        tuple(getattr(config, "resnet_dropout", RESNET38_DROPOUT)),
    )


class ResNet38Stem(Stem):
    """conv1a (3x3) and the b2 units (the first at stride 2): (B, 3, H, W) ->
    (B, w3 / 2, ceil(H / 2), ceil(W / 2)); 64 and 128 channels at the paper's widths."""

    family = "resnet38"
    stride = 2

    def __init__(self, config) -> None:
        super().__init__()
        widths, _, _ = _config(config)
        c1, c2 = widths[0] // 4, widths[0] // 2
        self.conv1a = nn.Conv2d(3, c1, 3, padding=1, bias=False)
        self.b2 = ResidualUnit(c1, c2, c2, stride=2)
        self.b2_1 = ResidualUnit(c2, c2, c2)
        self.b2_2 = ResidualUnit(c2, c2, c2)
        self.out_channels = c2

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.b2_2(self.b2_1(self.b2(self.conv1a(pixel_values))))


class ResNet38Body(Backbone):
    """b3 ... b7 and bn7 after a stem of ``in_channels``: taps b3, b4, b5 (strides 4, 8, 8),
    features relu(bn7(b7)) (stride 8, w7 channels)."""

    def __init__(self, config, in_channels: int) -> None:
        super().__init__()
        (w3, w4, w5, w6, w7), (d3, d4, d5), dropout = _config(config)
        self._stages: dict[int, list[str]] = {}
        self._add_units(3, d3, in_channels, w3, w3, stride=2)
        self._add_units(4, d4, w3, w4, w4, stride=2)
        self._add_units(5, d5, w4, w5 // 2, w5, stride=1, dilation=2)
        self.b6 = BottleneckUnit(w5, w6, dilation=4, dropout=dropout[0])
        self.b7 = BottleneckUnit(w6, w7, dilation=4, dropout=dropout[1])
        self.bn7 = nn.BatchNorm2d(w7)
        self._pretrained = list(self.children())
        self.stage_channels = {3: w3, 4: w4, 5: w5}
        self.stage_strides = {3: 4, 4: 8, 5: 8}
        self.out_channels, self.output_stride = w7, 8

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
        taps = {}
        x = stem
        for block, names in self._stages.items():
            for name in names:
                x = getattr(self, name)(x)
            taps[block] = x
        x = self.b7(self.b6(x))
        return taps, F.relu(self.bn7(x))

    def pretrained_modules(self) -> list[nn.Module]:
        return list(self._pretrained)


RESNET38 = register(
    BackboneSpec(
        name="resnet38",
        family="resnet38",
        stem=lambda config, options: ResNet38Stem(config),
        body=lambda config, options, stem: ResNet38Body(config, stem.out_channels),
        load=load_resnet38_into,
        follows=("vgg",),
        summary="the paper's branch B: the wide ResNet-38 of PSA/SEAM/RRM, output stride 8; "
        "follows VGG16's conv1-conv2 as in the paper, or its own conv1a + b2; widths from "
        "the config's resnet_* fields",
        weights="PSA's ilsvrc-cls_rna-a1_cls1000_ep-0001.params converted to .pth",
    )
)

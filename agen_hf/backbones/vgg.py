"""VGG16, DeepLab-style (section III.1): the stem is conv1, pool1, conv2 (stride 2, the layers
the paper's two branches share); the body is pool2, conv3, pool3, conv4, pool4 and pool5 at
stride 1 around conv5 (dilated), so that its features are at stride 8. The body ends at pool5:
branch A's head adds the 3x3 fc6/fc7 and the class-aware 1x1 convolution
(:mod:`agen_hf.branches`); step two's DeepLab-VGG16 its LargeFOV or ASPP head
(:mod:`agen_hf.deeplab`). Module names follow torchvision's weight file (``convN_M``), so that
ImageNet weights map by name."""

from __future__ import annotations

import torch
from torch import nn

from .registry import Backbone, BackboneSpec, Stem, register
from .weight_files import load_vgg16_into

VGG16_CHANNELS = (64, 128, 256, 512, 512)
VGG16_DEPTHS = (2, 2, 3, 3, 3)


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


def _widths(config) -> tuple[tuple[int, ...], tuple[int, ...], bool]:
    return (
        tuple(getattr(config, "vgg_channels", VGG16_CHANNELS)),
        tuple(getattr(config, "vgg_depths", VGG16_DEPTHS)),
        bool(getattr(config, "vgg_batch_norm", False)),
    )


class VggStem(Stem):
    """VGG16 conv1 block, pool1, conv2 block: (B, 3, H, W) -> (B, vgg_channels[1], ceil(H/2),
    ceil(W/2))."""

    family = "vgg"
    stride = 2

    def __init__(self, config) -> None:
        super().__init__()
        ch, depth, bn = _widths(config)
        self.conv1 = VggBlock(1, 3, ch[0], depth[0], batch_norm=bn)
        self.pool1 = max_pool(2)
        self.conv2 = VggBlock(2, ch[0], ch[1], depth[1], batch_norm=bn)
        self.out_channels = ch[1]

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.pool1(self.conv1(pixel_values)))


class Vgg16Body(Backbone):
    """pool2, conv3, pool3, conv4, pool4 (stride 1), conv5 (dilated), pool5 (stride 1): taps
    conv3 (stride 4), conv4 (8), conv5 (8); features pool5's (stride 8)."""

    def __init__(self, config, in_channels: int) -> None:
        super().__init__()
        ch, depth, bn = _widths(config)
        dilation = getattr(config, "vgg_stage5_dilation", 2)
        self.pool2 = max_pool(2)
        self.conv3 = VggBlock(3, in_channels, ch[2], depth[2], batch_norm=bn)
        self.pool3 = max_pool(2)
        self.conv4 = VggBlock(4, ch[2], ch[3], depth[3], batch_norm=bn)
        self.pool4 = max_pool(1)
        self.conv5 = VggBlock(5, ch[3], ch[4], depth[4], dilation=dilation, batch_norm=bn)
        self.pool5 = max_pool(1)
        self.stage_channels = {3: ch[2], 4: ch[3], 5: ch[4]}
        self.stage_strides = {3: 4, 4: 8, 5: 8}
        self.out_channels, self.output_stride = ch[4], 8

    def forward(self, stem: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        f3 = self.conv3(self.pool2(stem))
        f4 = self.conv4(self.pool3(f3))
        f5 = self.conv5(self.pool4(f4))
        return {3: f3, 4: f4, 5: f5}, self.pool5(f5)

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.conv3, self.conv4, self.conv5]


VGG16 = register(
    BackboneSpec(
        name="vgg16",
        family="vgg",
        stem=lambda config, options: VggStem(config),
        body=lambda config, options, stem: Vgg16Body(config, stem.out_channels),
        load=load_vgg16_into,
        follows=("resnet38",),
        summary="the paper's branch A: VGG16 (-BN with vgg_batch_norm), DeepLab-LargeFOV "
        "layout, output stride 8; widths from the config's vgg_* fields",
        weights="torchvision vgg16-397923af.pth (vgg16_bn-6c64b313.pth)",
    )
)

"""torchvision's ImageNet families as AGEN backbones: ResNet-50 and ResNet-101 dilated to
output stride 8 as DeepLab does (stem conv1 + layer1 at stride 4; taps layer2, layer3, layer4,
all at stride 8), and ConvNeXt-T, which cannot dilate (stem: the 4x4 patchify and stage 1;
taps stages 2, 3, 4 at strides 8, 16, 32; output stride 32). Module names are torchvision's,
so that its weight files map by name (``resnet50-0676ba61.pth``, ``convnext_tiny-983f1562.pth``)."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision.models import convnext, resnet

from .registry import Backbone, BackboneSpec, Stem, register
from .weight_files import load_by_name

RESNET_LAYERS = {"resnet50": (3, 4, 6, 3), "resnet101": (3, 4, 23, 3)}


def _resnet(name: str, options: dict) -> resnet.ResNet:
    layers = tuple(options.get("layers", RESNET_LAYERS[name]))
    if len(layers) != 4 or any(not isinstance(n, int) or n < 1 for n in layers):
        raise ValueError(f"backbone {name}: layers must be 4 positive counts, got {layers}")
    return resnet.ResNet(
        resnet.Bottleneck,
        list(layers),
        width_per_group=int(options.get("width_per_group", 64)),
        replace_stride_with_dilation=[False, True, True],
    )


class ResNetStem(Stem):
    """conv1, bn1, relu, maxpool, layer1: (B, 3, H, W) -> (B, 256, H/4, W/4)."""

    family = "torchvision-resnet"
    stride = 4

    def __init__(self, net: resnet.ResNet) -> None:
        super().__init__()
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1"):
            self.add_module(name, getattr(net, name))
        self.out_channels = net.layer1[-1].conv3.out_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(pixel_values))))
        return self.layer1(x)


class ResNetBody(Backbone):
    """layer2, layer3 and layer4 (dilated 2 and 4): taps at stride 8, features layer4's."""

    def __init__(self, net: resnet.ResNet) -> None:
        super().__init__()
        self.layer2, self.layer3, self.layer4 = net.layer2, net.layer3, net.layer4
        width = lambda layer: layer[-1].conv3.out_channels  # noqa: E731
        self.stage_channels = {3: width(net.layer2), 4: width(net.layer3), 5: width(net.layer4)}
        self.stage_strides = {3: 8, 4: 8, 5: 8}
        self.out_channels, self.output_stride = self.stage_channels[5], 8

    def forward(self, stem: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        f3 = self.layer2(stem)
        f4 = self.layer3(f3)
        f5 = self.layer4(f4)
        return {3: f3, 4: f4, 5: f5}, f5

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.layer2, self.layer3, self.layer4]


CONVNEXT_TINY = {"dims": (96, 192, 384, 768), "depths": (3, 3, 9, 3)}


def _convnext(options: dict) -> convnext.ConvNeXt:
    dims = tuple(options.get("dims", CONVNEXT_TINY["dims"]))
    depths = tuple(options.get("depths", CONVNEXT_TINY["depths"]))
    if len(dims) != 4 or len(depths) != 4:
        raise ValueError(
            f"backbone convnext_tiny: dims and depths need 4 values each, got {dims} / {depths}"
        )
    setting = [
        convnext.CNBlockConfig(dims[i], dims[i + 1] if i < 3 else None, depths[i]) for i in range(4)
    ]
    return convnext.ConvNeXt(
        setting, stochastic_depth_prob=float(options.get("stochastic_depth_prob", 0.1))
    )


class ConvNextStem(Stem):
    """The 4x4 patchify convolution and stage 1 (``features.0``, ``features.1``): stride 4."""

    family = "torchvision-convnext"
    stride = 4

    def __init__(self, net: convnext.ConvNeXt) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([("0", net.features[0]), ("1", net.features[1])]))
        self.out_channels = net.features[1][-1].block[0].in_channels

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.features(pixel_values)


class ConvNextBody(Backbone):
    """``features.2`` ... ``features.7``: downsampling and stages 2, 3, 4; taps after each stage
    (strides 8, 16, 32), features stage 4's."""

    def __init__(self, net: convnext.ConvNeXt) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict((str(i), net.features[i]) for i in range(2, 8)))
        width = lambda i: net.features[i][-1].block[0].in_channels  # noqa: E731
        self.stage_channels = {3: width(3), 4: width(5), 5: width(7)}
        self.stage_strides = {3: 8, 4: 16, 5: 32}
        self.out_channels, self.output_stride = self.stage_channels[5], 32

    def forward(self, stem: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        taps, x = {}, stem
        for i, layer in enumerate(self.features, start=2):
            x = layer(x)
            if i in (3, 5, 7):
                taps[(i + 3) // 2] = x
        return taps, x

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.features]


def _load(model, stem_prefix: str, body_prefix: str, source):
    return load_by_name(model, {stem_prefix: "", body_prefix: ""}, source)


def _register_resnet(name: str, summary: str, weights: str) -> BackboneSpec:
    return register(
        BackboneSpec(
            name=name,
            family="torchvision-resnet",
            stem=lambda config, options: ResNetStem(_resnet(name, options)),
            body=lambda config, options, stem: ResNetBody(_resnet(name, options)),
            load=_load,
            summary=summary,
            weights=weights,
            option_names=("layers", "width_per_group"),
        )
    )


RESNET50 = _register_resnet(
    "resnet50",
    "torchvision ResNet-50, dilated to output stride 8 (DeepLab's layer3/layer4 dilation)",
    "torchvision resnet50-0676ba61.pth (or -11ad3fa6)",
)
RESNET101 = _register_resnet(
    "resnet101",
    "torchvision ResNet-101, dilated to output stride 8",
    "torchvision resnet101-63fe2227.pth",
)
CONVNEXT = register(
    BackboneSpec(
        name="convnext_tiny",
        family="torchvision-convnext",
        stem=lambda config, options: ConvNextStem(_convnext(options)),
        body=lambda config, options, stem: ConvNextBody(_convnext(options)),
        load=_load,
        summary="torchvision ConvNeXt-T; cannot dilate: output stride 32",
        weights="torchvision convnext_tiny-983f1562.pth",
        option_names=("dims", "depths", "stochastic_depth_prob"),
        output_stride=32,
    )
)

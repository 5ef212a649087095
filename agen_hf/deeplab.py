"""DeepLab networks for step two of two-step AGEN (paper Table 5: AGEN-VGG, AGEN-ResNet):
fully supervised segmentation trained on AGEN's pseudo labels.

* ``backbone="resnet101"``: torchvision's ``deeplabv3_resnet101`` (DeepLab-v3 ASPP head on a
  dilated ResNet-101, output stride 8); other ``resnet_layers`` build the same network at
  another depth (tests use (1, 1, 1, 1)).
* ``backbone="vgg16"``: DeepLab-v1/v2 on VGG16 (pool4/pool5 stride 1, conv5 dilated 2, output
  stride 8) with ``head="largefov"`` (fc6 3x3 dilation 12 -> fc7 1x1 -> fc8) or
  ``head="aspp"`` (DeepLab-v2 ASPP-L: four such branches at dilations 6, 12, 18, 24, summed).
* any other registered backbone (:mod:`agen_hf.backbones`: ``resnet50``, ``convnext_tiny``,
  ``resnet38``, ``timm:<model>`` ...): its stem and body with the LargeFOV or ASPP-L head on
  its features, the dilations scaled to its output stride (``backbone_options``: the
  backbone's options). The two above keep Table 5's networks and their weight names.

Both have the :class:`agen_hf.AgenModel` inference interface (``model(pixel_values).logits``),
so the image processor, ``eval_voc.py`` and ``predict.py`` take them as they are.
"""

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation import deeplabv3_resnet101
from torchvision.models.segmentation.deeplabv3 import DeepLabHead, DeepLabV3

from .backbones import VggBlock, check_options, max_pool, spec_of
from .branches import scaled_dilation
from .configuration_utils import SegmentationConfig
from .hub import SegmentationHubMixin
from .labels import default_id2label
from .losses import ProcessGroup, fully_supervised_loss
from .model_card import DEEPLAB_CARD
from .modeling_outputs import SegmenterOutput
from .normalization import IMAGENET_MEAN, IMAGENET_STD
from .parameter_groups import split_parameters

BACKBONES = ("resnet101", "vgg16")  # Table 5's networks; any registered backbone works too
VGG_HEADS = ("largefov", "aspp")


@dataclass
class DeepLabConfig(SegmentationConfig):
    """Configuration of :class:`DeepLabModel`.

    backbone: ``"resnet101"``, ``"vgg16"`` (Table 5's) or any registered backbone;
    backbone_options: its options (``{"layers": [3, 4, 6, 3]}``, timm's keywords).
    head: for VGG16, ``"largefov"`` (DeepLab-LargeFOV) or ``"aspp"`` (DeepLab-v2 ASPP-L).
    num_labels: classes with background (the paper's VOC: 21; the recipe takes them from the
        pseudo-label dataset); id2label / label2id: their names (``LABEL_i``/VOC's when none
        are given, as :class:`agen_hf.AgenConfig`); ignore_index: 255.
    resnet_layers: bottleneck units per ResNet stage ((3, 4, 23, 3): ResNet-101).
    vgg_channels / vgg_depths: VGG16's (64, 128, 256, 512, 512) / (2, 2, 3, 3, 3).
    fc_channels: width of fc6/fc7 (1024); aspp_dilations: (6, 12, 18, 24).
    image_mean / image_std: ImageNet statistics (the backbones' weights expect them).
    """

    model_type: ClassVar[str] = "deeplab"
    implied_by_older_versions: ClassVar[dict] = {"backbone_options": {}}

    backbone: str = "resnet101"
    backbone_options: dict = dataclasses.field(default_factory=dict)
    head: str = "largefov"
    num_labels: int = 21
    id2label: dict[int, str] | None = None
    label2id: dict[str, int] | None = None
    ignore_index: int = 255
    resnet_layers: tuple[int, ...] = (3, 4, 23, 3)
    vgg_channels: tuple[int, ...] = (64, 128, 256, 512, 512)
    vgg_depths: tuple[int, ...] = (2, 2, 3, 3, 3)
    fc_channels: int = 1024
    aspp_dilations: tuple[int, ...] = (6, 12, 18, 24)
    image_mean: tuple[float, ...] = IMAGENET_MEAN
    image_std: tuple[float, ...] = IMAGENET_STD

    def __post_init__(self) -> None:
        for name in (
            "resnet_layers",
            "vgg_channels",
            "vgg_depths",
            "aspp_dilations",
            "image_mean",
            "image_std",
        ):
            setattr(self, name, tuple(getattr(self, name)))
        if self.backbone not in BACKBONES:
            try:
                check_options(spec_of(self.backbone), dict(self.backbone_options))
            except ValueError as e:
                raise ValueError(f"backbone: {e}") from None
        if self.head not in VGG_HEADS:
            raise ValueError(f"head: must be one of {VGG_HEADS}, got {self.head!r}")
        if len(self.resnet_layers) != 4 or len(self.vgg_channels) != 5 or len(self.vgg_depths) != 5:
            raise ValueError("resnet_layers needs 4 values, vgg_channels and vgg_depths 5")
        if self.num_labels < 2 or self.ignore_index < self.num_labels:
            raise ValueError(
                f"num_labels: must be >= 2 and below ignore_index, got "
                f"{self.num_labels} / {self.ignore_index}"
            )
        self.id2label = (
            default_id2label(self.num_labels)
            if self.id2label is None
            else {int(k): str(v) for k, v in self.id2label.items()}
        )
        if sorted(self.id2label) != list(range(self.num_labels)):
            raise ValueError(
                f"id2label: keys must be 0..{self.num_labels - 1}, got {sorted(self.id2label)}"
            )
        expected = {v: k for k, v in self.id2label.items()}
        if (
            self.label2id is not None
            and {str(k): int(v) for k, v in self.label2id.items()} != expected
        ):
            raise ValueError("label2id: must be the inverse of id2label")
        self.label2id = expected

    def with_classes(self, id2label: dict[int, str]) -> "DeepLabConfig":
        """This config for another label set (``{0: "background", 1: ...}``)."""
        return dataclasses.replace(
            self, num_labels=len(id2label), id2label=dict(id2label), label2id=None
        )


class LargeFovHead(nn.Sequential):
    """fc6 (3x3, dilated), ReLU, dropout, fc7 (1x1), ReLU, dropout, fc8 (1x1) to the classes."""

    def __init__(self, in_channels: int, channels: int, dilation: int, num_labels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, channels, 3, padding=dilation, dilation=dilation),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(channels, channels, 1),
            nn.ReLU(inplace=True),
            nn.Dropout2d(0.5),
            nn.Conv2d(channels, num_labels, 1),
        )


def deeplab_heads(config: DeepLabConfig, in_channels: int, output_stride: int) -> nn.ModuleList:
    """The LargeFOV head (one branch, fc6 dilated 12) or ASPP-L (one a rate of
    ``aspp_dilations``), the dilations given at stride 8 and scaled to ``output_stride``."""
    rates = (12,) if config.head == "largefov" else config.aspp_dilations
    return nn.ModuleList(
        LargeFovHead(
            in_channels,
            config.fc_channels,
            scaled_dilation(r, output_stride),
            config.num_labels,
        )
        for r in rates
    )


def summed_heads(heads: nn.ModuleList, features: torch.Tensor) -> torch.Tensor:
    """The logits: the sum of the heads' (ASPP-L's four branches; LargeFOV's one)."""
    return torch.stack([head(features) for head in heads]).sum(dim=0)


class DeepLabVGG(nn.Module):
    """VGG16 conv1-conv5 (DeepLab's pooling: stride 8) and a LargeFOV or ASPP-L head."""

    def __init__(self, config: DeepLabConfig) -> None:
        super().__init__()
        ch, depth = config.vgg_channels, config.vgg_depths
        strides = (2, 2, 2, 1, 1)
        layers, in_ch = [], 3
        for block in range(1, 6):
            layers.append(
                VggBlock(
                    block, in_ch, ch[block - 1], depth[block - 1], dilation=2 if block == 5 else 1
                )
            )
            layers.append(max_pool(strides[block - 1]))
            in_ch = ch[block - 1]
        self.features = nn.Sequential(*layers)
        self.heads = deeplab_heads(config, in_ch, output_stride=8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return summed_heads(self.heads, self.features(x))


def _deeplabv3(config: DeepLabConfig) -> DeepLabV3:
    if config.resnet_layers == (3, 4, 23, 3):
        return deeplabv3_resnet101(
            weights=None, weights_backbone=None, num_classes=config.num_labels, aux_loss=False
        )
    backbone = resnet.ResNet(
        resnet.Bottleneck,
        list(config.resnet_layers),
        replace_stride_with_dilation=[False, True, True],
    )
    return DeepLabV3(
        IntermediateLayerGetter(backbone, {"layer4": "out"}),
        DeepLabHead(2048, config.num_labels),
        None,
    )


class RegistryDeepLab(nn.Module):
    """A registered backbone's stem and body with the LargeFOV (one branch) or ASPP-L (four,
    summed) head of :class:`DeepLabVGG`, its dilations scaled to the body's output stride."""

    def __init__(self, config: DeepLabConfig) -> None:
        super().__init__()
        spec, options = spec_of(config.backbone), dict(config.backbone_options)
        self.stem = spec.stem(config, options)
        self.body = spec.body(config, options, self.stem)
        self.heads = deeplab_heads(config, self.body.out_channels, self.body.output_stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, features = self.body(self.stem(x))
        return summed_heads(self.heads, features)


class DeepLabModel(
    nn.Module, SegmentationHubMixin, tags=["deeplab"], model_card_template=DEEPLAB_CARD
):
    """A DeepLab network with the Hugging Face save/load/push of :class:`agen_hf.AgenModel`."""

    config_class = DeepLabConfig

    def __init__(self, config: DeepLabConfig) -> None:
        super().__init__()
        if not isinstance(config, DeepLabConfig):
            raise TypeError(f"config: expected a DeepLabConfig, got {type(config).__name__}")
        self.config = config
        if config.backbone == "resnet101":
            self.net = _deeplabv3(config)
        elif config.backbone == "vgg16":
            self.net = DeepLabVGG(config)
        else:
            self.net = RegistryDeepLab(config)
        for m in self.net.modules():
            if isinstance(m, nn.Conv2d) and m.out_channels == config.num_labels:
                nn.init.normal_(m.weight, std=0.01)  # class scores start near 0
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(
        self,
        pixel_values: torch.Tensor,
        masks: torch.Tensor | None = None,
        segmentation_only: bool = True,
        process_group: ProcessGroup | None = None,
    ) -> SegmenterOutput:
        """Logits (B, num_labels, h, w): stride 8 for VGG16, input size for ResNet-101 (as
        torchvision returns them); with ``masks`` (B, H, W), the loss: pixel-wise
        cross-entropy against them (``seg``). A DeepLab only segments: ``segmentation_only``
        is accepted for the interface it shares with :class:`agen_hf.AgenModel` and must be
        True."""
        if pixel_values.ndim != 4 or pixel_values.shape[1] != 3:
            raise ValueError(
                f"pixel_values: expected (B, 3, H, W), got {tuple(pixel_values.shape)}"
            )
        if not segmentation_only:
            raise ValueError("DeepLabModel only segments: segmentation_only must be True")
        logits = self.net(pixel_values)
        out = SegmenterOutput(
            logits=logits["out"] if self.config.backbone == "resnet101" else logits
        )
        if masks is not None:
            loss = fully_supervised_loss(out.logits, masks, self.config.ignore_index, process_group)
            out.loss, out.loss_terms = loss, {"seg": loss}
        return out

    @property
    def output_stride(self) -> int:
        """What an input's size must be a multiple of (8 for Table 5's networks)."""
        return self.net.body.output_stride if isinstance(self.net, RegistryDeepLab) else 8

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``"backbone"``: what ImageNet weights initialise; ``"new"``: the head (10x lr)."""
        if isinstance(self.net, RegistryDeepLab):
            return split_parameters(self, [self.net.stem, *self.net.body.pretrained_modules()])
        backbone = self.net.backbone if self.config.backbone == "resnet101" else self.net.features
        return split_parameters(self, [backbone])

"""Any timm model with ``features_only`` as a backbone: ``timm:<model name>`` (``pip install
agen_hf[timm]``). A CNN's last three feature levels are the stage taps (dilated to output stride
8 where the family can: ``output_stride=8``, else its own, 32); a ViT's blocks at a third, two
thirds and the end of its depth, tokens reshaped to maps (stride 16 for a /16 model), at any
input size (``dynamic_img_size``, padded to the patch size). The timm model is built
without weights (nothing is downloaded); ImageNet weights come from a file. Its stem cannot be
split off: a timm backbone has its own (the body reads the image), never a shared one."""

from __future__ import annotations

import torch
from torch import nn

from .registry import Backbone, BackboneSpec, IdentityStem, register_prefix
from .weight_files import load_by_name

EXTRA = "timm"


def import_timm():
    try:
        import timm
    except ImportError:
        raise ImportError(
            "timm backbones need timm: pip install 'agen_hf[timm]' (or pip install timm)"
        ) from None
    return timm


def _is_vit(timm, name: str) -> bool:
    """A vision transformer: timm's ``vision_transformer`` family (ViT, DeiT ...)."""
    module = timm.models.model_entrypoint(name).__module__.rsplit(".", 1)[-1]
    return module in ("vision_transformer", "deit", "eva", "beit")


class TimmBody(Backbone):
    """A timm model (``net``) built with ``features_only``; ``options`` go to
    ``timm.create_model`` (a reduced ``depth``, ``embed_dim``, ``num_heads`` for a test;
    ``output_stride``)."""

    def __init__(self, name: str, options: dict) -> None:
        super().__init__()
        timm = import_timm()
        self.timm_version = timm.__version__
        options = dict(options)
        vit = _is_vit(timm, name)
        if vit:
            options.setdefault("dynamic_img_size", True)
            options.setdefault("dynamic_img_pad", True)
            probe = timm.create_model(name, pretrained=False, **options)
            depth = len(probe.blocks)
            del probe
            indices = (depth // 3 - 1, 2 * depth // 3 - 1, depth - 1)
            self.net = timm.create_model(
                name, pretrained=False, features_only=True, out_indices=indices, **options
            )
        else:
            self.net = _cnn(timm, name, options)
            count = len(self.net.feature_info)
            if count < 3:
                raise ValueError(f"backbone timm:{name}: {count} feature levels, 3 needed")
            if len(self.net.feature_info.out_indices) > 3:
                indices = tuple(self.net.feature_info.out_indices[-3:])
                self.net = _cnn(timm, name, {**options, "out_indices": indices})
        channels = self.net.feature_info.channels()[-3:]
        strides = self.net.feature_info.reduction()[-3:]
        self.stage_channels = dict(zip((3, 4, 5), channels))
        self.stage_strides = dict(zip((3, 4, 5), strides))
        self.out_channels, self.output_stride = channels[-1], strides[-1]

    def forward(self, pixel_values: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        features = self.net(pixel_values)[-3:]
        return dict(zip((3, 4, 5), features)), features[-1]

    def pretrained_modules(self) -> list[nn.Module]:
        return [self.net]


def _cnn(timm, name: str, options: dict):
    """A CNN's feature net, dilated to stride 8 where the family allows it."""
    if "output_stride" not in options:
        try:
            return timm.create_model(
                name, pretrained=False, features_only=True, output_stride=8, **options
            )
        except (TypeError, AssertionError, ValueError, NotImplementedError):
            pass  # a family that cannot dilate keeps its own stride
    return timm.create_model(name, pretrained=False, features_only=True, **options)


def _load(model, stem_prefix: str, body_prefix: str, source):
    # the feature net's names are the model's (a ViT's under ``model.``), behind ``net.``
    return load_by_name(model, {body_prefix + "net.": "", body_prefix + "net.model.": ""}, source)


def timm_spec(model_name: str) -> BackboneSpec:
    name = f"timm:{model_name}"
    return BackboneSpec(
        name=name,
        family=name,
        stem=lambda config, options: IdentityStem(name),
        body=lambda config, options, stem: TimmBody(model_name, options),
        load=_load,
        summary=f"timm's {model_name} with features_only",
        weights=f"timm {model_name} weights as a file (.safetensors, .pth, .bin)",
        option_names=None,
        extra=EXTRA,
        output_stride=None,
        stem_shareable=False,
    )


register_prefix("timm", timm_spec)

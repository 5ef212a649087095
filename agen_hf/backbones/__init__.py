"""Backbones: what AGEN needs from a feature extractor, and the registry that builds one by name
for branch A, branch B and step two's DeepLab. ``python -m agen_hf.backbones`` lists them.

The contract
------------
A backbone is a **stem** (:class:`Stem`) and a **body** (:class:`Backbone`).

* The stem: the layers before the first tapped stage, ``(B, 3, H, W) -> (B, out_channels,
  H / stride, W / stride)``. Stems of one ``family`` are interchangeable: two branches may
  share one. The paper shares VGG16's conv1-conv2 (stride 2) between branch A (VGG16) and
  branch B (ResNet-38, whose body *follows* VGG's stem in place of its own conv1a and b2).
  ``AgenConfig.share_stem`` records whether a pair shares (True for the paper; a pair whose
  branch B cannot follow branch A's stem family has one stem each).
* The body, ``forward(stem_output) -> (taps, features)``: the stage taps ``{3, 4, 5}`` that
  feed AGM-3/4/5 (``stage_channels``, ``stage_strides`` from the input image), and the features
  its branch's head reads (``out_channels``, ``output_stride``: 8 for the paper's backbones and
  the dilated ResNets; 32 or 16 where a family cannot dilate: ConvNeXt, ViT/16).
  ``pretrained_modules()``: what ImageNet weights initialise, trained at the base learning rate
  (every other layer, heads included, at ``head_lr_multiplier`` times it). Every parameter is
  in a child module, so that the branch's head is added beside the body's layers.
* Batch norm: trained in branch A; in branch B (body and its own stem) frozen at its
  statistics when ``AgenConfig.freeze_batch_norm`` (the paper's ResNet-38, as PSA, SEAM and RRM
  train it).
* Weights: ``spec.load(model, stem_prefix, body_prefix, file)`` copies an ImageNet weight file
  (the family's own names: torchvision's, PSA's, timm's) into the stem and the body and
  reports what was loaded, missing and unexpected (:mod:`agen_hf.backbones.weight_files`'s
  ``LoadReport``). Nothing is ever downloaded.

Heads are the model's (:mod:`agen_hf.branches`): branch A's 3x3 fc6/fc7 and class-aware 1x1
convolution, branch B's segmentation head, DeepLab's LargeFOV/ASPP; their dilations follow the
body's output stride.

Registered: ``vgg16`` and ``resnet38`` (the paper's pair; their widths are the config's
``vgg_*`` / ``resnet_*`` fields), ``resnet50``, ``resnet101`` and ``convnext_tiny``
(torchvision), and ``timm:<model>`` for any timm model with ``features_only`` (the ``timm``
extra). A new backbone is one :func:`register` call with a :class:`BackboneSpec`.
"""

from . import resnet38, timm_models, torchvision_models, vgg  # noqa: F401  (they register)
from .registry import (
    STAGES,
    Backbone,
    BackboneSpec,
    IdentityStem,
    Stem,
    check_options,
    frozen_batch_norm,
    prefixes,
    register,
    register_prefix,
    registered,
    spec_of,
)
from .resnet38 import BottleneckUnit, ResidualUnit, ResNet38Body, ResNet38Stem
from .vgg import Vgg16Body, VggBlock, VggStem, max_pool

__all__ = [
    "STAGES",
    "Backbone",
    "BackboneSpec",
    "BottleneckUnit",
    "IdentityStem",
    "ResNet38Body",
    "ResNet38Stem",
    "ResidualUnit",
    "Stem",
    "Vgg16Body",
    "VggBlock",
    "VggStem",
    "check_options",
    "frozen_batch_norm",
    "max_pool",
    "prefixes",
    "register",
    "register_prefix",
    "registered",
    "spec_of",
]

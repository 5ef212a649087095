"""ImageNet backbone weights from files the ecosystem already has, never downloaded.

| file | into |
| --- | --- |
| torchvision VGG16 (``vgg16-397923af.pth``) or VGG16-BN (``vgg16_bn-6c64b313.pth``) | AGEN's shared stem (conv1-conv2) + branch A (conv3-conv5); DeepLab-VGG16's conv1-conv5 |
| ResNet-38 of PSA/SEAM/RRM (``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` converted to ``.pth``) | AGEN's branch B (b3 ... b7, bn7) |
| torchvision ResNet-101 (``resnet101-63fe2227.pth``) | DeepLab-ResNet-101's backbone |

Each loader copies tensors by an explicit name mapping and returns a :class:`LoadReport`
(loaded, missing, unexpected keys); a shape mismatch is a ``ValueError`` naming both keys and
shapes. AGEN's branch B replaces ResNet-38's ``conv1a`` and ``b2`` blocks by the shared VGG stem
(section III.1), so those keys are reported unexpected, as are the ImageNet classifiers.
The file readers and each family's loader are :mod:`agen_hf.backbones.weight_files` (the
registry's specs call them); this module loads them into whole models, by branch.
"""

from __future__ import annotations

from torch import nn

from .backbones import spec_of
from .backbones.weight_files import (
    LoadReport,
    check_vgg_batch_norm,
    load_by_name,
    load_mapped,
    load_resnet38_into,
    load_vgg16_into,
    read_state_dict,
    vgg_mapping,
)
from .deeplab import DeepLabModel
from .modeling_agen import AgenModel

__all__ = [
    "LoadReport",
    "branch_of",
    "load_branch",
    "load_by_name",
    "load_deeplab_backbone",
    "load_mapped",
    "load_resnet38",
    "load_resnet38_into",
    "load_resnet101",
    "load_vgg16",
    "load_vgg16_into",
    "read_state_dict",
]


def load_branch(model: nn.Module, branch: str, source) -> LoadReport:
    """ImageNet weights for ``branch`` (``"a"`` or ``"b"``) of an AgenModel, from a file of
    its backbone's family (:class:`agen_hf.backbones.BackboneSpec`'s ``load``): into its body
    and its stem (branch A's, shared by B in the paper's pair, or B's own)."""
    if branch not in ("a", "b"):
        raise ValueError(f"branch: 'a' or 'b', got {branch!r}")
    name = getattr(model.config, f"branch_{branch}")
    spec = spec_of(name)
    if spec.load is None:
        raise ValueError(f"backbone {name}: no weight loader")
    if branch == "a":
        stem_prefix = "stem."
    else:  # following A's stem, B has none of its own: that stem takes A's file
        stem_prefix = None if model.stem_b is None else "stem_b."
    return spec.load(model, stem_prefix, f"branch_{branch}.", source)


def branch_of(model: nn.Module, backbone: str) -> str:
    """``"a"`` or ``"b"``: the branch of an AgenModel whose backbone is ``backbone`` (branch
    A when both are); an error naming the model's backbones when neither is."""
    for branch in ("a", "b"):
        if getattr(model.config, f"branch_{branch}") == backbone:
            return branch
    raise ValueError(
        f"no branch of this model is {backbone} (branch A: {model.config.branch_a}, branch B: "
        f"{model.config.branch_b})"
    )


def load_vgg16(model: nn.Module, source) -> LoadReport:
    """torchvision VGG16 (or VGG16-BN, matching ``vgg_batch_norm``) ImageNet weights into
    AGEN's VGG16 branch and its stem (the paper's stem + branch A), or into a VGG16
    :class:`~agen_hf.deeplab.DeepLabModel`."""
    if isinstance(model, AgenModel):
        return load_branch(model, branch_of(model, "vgg16"), source)
    if not (isinstance(model, DeepLabModel) and model.config.backbone == "vgg16"):
        raise TypeError(
            f"load_vgg16: expected an AgenModel or a VGG16 DeepLabModel, got {type(model).__name__}"
        )
    state, name = read_state_dict(source)
    prefixes = {b: f"net.features.{2 * (b - 1)}." for b in range(1, 6)}
    mapping = vgg_mapping(model, prefixes, model.config.vgg_depths, False)
    check_vgg_batch_norm(state, mapping, name)
    return load_mapped(model, state, mapping, list(mapping), name)


def load_resnet38(model: nn.Module, source) -> LoadReport:
    """The ImageNet ResNet-38 of PSA/SEAM/RRM into AGEN's ResNet-38 branch (the paper's
    branch B; same unit names)."""
    if not isinstance(model, AgenModel):
        raise TypeError(f"load_resnet38: expected an AgenModel, got {type(model).__name__}")
    return load_branch(model, branch_of(model, "resnet38"), source)


def load_resnet101(model: nn.Module, source) -> LoadReport:
    """torchvision ResNet-101 ImageNet weights into a ResNet-101 DeepLabModel's backbone."""

    if not (isinstance(model, DeepLabModel) and model.config.backbone == "resnet101"):
        raise TypeError(
            f"load_resnet101: expected a ResNet-101 DeepLabModel, got {type(model).__name__}"
        )
    state, name = read_state_dict(source)
    scope = [k for k in model.state_dict() if k.startswith("net.backbone.")]
    mapping = {k: k.removeprefix("net.backbone.") for k in scope}
    return load_mapped(model, state, mapping, scope, name)


def load_deeplab_backbone(model: nn.Module, source) -> LoadReport:
    """ImageNet weights into a DeepLabModel's backbone: torchvision's VGG16 or ResNet-101 for
    Table 5's networks, the backbone family's own file for any other registered backbone."""
    backbone = model.config.backbone
    if backbone == "vgg16":
        return load_vgg16(model, source)
    if backbone == "resnet101":
        return load_resnet101(model, source)
    spec = spec_of(backbone)
    if spec.load is None:
        raise ValueError(f"backbone {backbone}: no weight loader")
    return spec.load(model, "net.stem.", "net.body.", source)

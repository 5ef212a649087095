"""The backbone contract's types and the registry (see :mod:`agen_hf.backbones`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

STAGES = (3, 4, 5)


class Stem(nn.Module):
    """The layers before a backbone's first tapped stage: ``(B, 3, H, W)`` ->
    ``(B, out_channels, H / stride, W / stride)``. Stems of one ``family`` are interchangeable,
    so that two branches may share one (the paper shares VGG16's conv1-conv2)."""

    family: str = ""
    out_channels: int = 3
    stride: int = 1


class IdentityStem(Stem):
    """No stem: the body reads the image (a timm model, which cannot be split)."""

    def __init__(self, family: str) -> None:
        super().__init__()
        self.family = family

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return pixel_values


class Backbone(nn.Module):
    """The body of a backbone after its stem: ``forward(stem_output)`` returns the stage taps
    ``{3: ..., 4: ..., 5: ...}`` (channels :attr:`stage_channels`, strides
    :attr:`stage_strides`, from the input image) and the features its branch's head reads
    (:attr:`out_channels`, stride :attr:`output_stride`). :meth:`pretrained_modules`: the
    layers ImageNet weights initialise (trained at the base learning rate; the heads and
    everything else at the higher one). Every parameter lives in a child module, so that a
    branch's head can be added beside the body's layers (its weights keep flat names)."""

    stage_channels: dict[int, int]
    stage_strides: dict[int, int]
    out_channels: int
    output_stride: int

    def forward(self, x: torch.Tensor) -> tuple[dict[int, torch.Tensor], torch.Tensor]:
        raise NotImplementedError

    def pretrained_modules(self) -> list[nn.Module]:
        raise NotImplementedError


Builder = Callable[..., Any]


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    family: its stems' family; ``follows``: the other families whose stem its body can
    follow (ResNet-38's body follows VGG16's conv1-conv2, as in the paper).
    stem(config, options) -> :class:`Stem`; body(config, options, stem) -> :class:`Backbone`:
    ``config`` is the model's config (the paper's backbones read their widths from its fields),
    ``options`` the branch's options (``branch_a_options``; other backbones' widths, depths).
    load(model, stem_prefix, body_prefix, source) -> LoadReport: ImageNet weights from a file
    into the model's stem and body (their key prefixes in ``model.state_dict()``).
    summary: one line for ``python -m agen_hf.backbones``; weights: the file it loads;
    option_names: the options it takes; output_stride: of its features (8: dilated as the
    paper's; 32 or 16 where the family cannot dilate); stem_shareable: False where the stem
    cannot be split off (the body reads the image), so that no other branch follows it.
    """

    name: str
    family: str
    stem: Builder
    body: Builder
    load: Builder | None = None
    follows: tuple[str, ...] = ()
    summary: str = ""
    weights: str = ""
    option_names: tuple[str, ...] | None = ()  # None: any (passed on, as timm's)
    extra: str | None = None  # the pip extra it needs (``timm``)
    output_stride: int | None = 8  # None: known once built (a timm model's)
    stem_shareable: bool = True

    def can_follow(self, family: str) -> bool:
        """Whether this body can take the output of a stem of ``family``."""
        return family == self.family or family in self.follows


_REGISTRY: dict[str, BackboneSpec] = {}
_PREFIXES: dict[str, Callable[[str], BackboneSpec]] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` under its name (an error if the name is taken)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"backbone {spec.name!r} is registered already")
    _REGISTRY[spec.name] = spec
    return spec


def register_prefix(prefix: str, make: Callable[[str], BackboneSpec]) -> None:
    """Names ``<prefix>:<model>`` (``timm:vit_small_patch16_224``) build their spec from the
    model's name with ``make``."""
    _PREFIXES[prefix] = make


def spec_of(name: str) -> BackboneSpec:
    """The spec of a registered name, or of a ``prefix:model`` name; an error listing the
    registered names otherwise."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    prefix, _, model = name.partition(":")
    if model and prefix in _PREFIXES:
        return _PREFIXES[prefix](model)
    raise ValueError(
        f"backbone {name!r}: not registered; registered: {', '.join(sorted(_REGISTRY))}"
        + "".join(f", or {p}:<model name>" for p in sorted(_PREFIXES))
    )


def registered() -> list[BackboneSpec]:
    """Every registered spec, by name (prefixed families are not listed one by one)."""
    return [_REGISTRY[n] for n in sorted(_REGISTRY)]


def prefixes() -> list[str]:
    return sorted(_PREFIXES)


def check_options(spec: BackboneSpec, options: dict) -> None:
    """Options a backbone does not take are an error naming them."""
    if spec.option_names is None:
        return
    unknown = sorted(set(options) - set(spec.option_names))
    if unknown:
        raise ValueError(
            f"backbone {spec.name}: unknown option(s) {', '.join(unknown)}; it takes "
            f"{', '.join(spec.option_names) or 'none'}"
        )


def frozen_batch_norm(module: nn.Module) -> None:
    """Batch norms of ``module`` kept at their statistics and affine values: eval mode, no
    gradient (ImageNet's, as PSA, SEAM and RRM train ResNet-38)."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
            for p in m.parameters(recurse=False):
                p.requires_grad_(False)

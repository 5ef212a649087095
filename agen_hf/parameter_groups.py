"""The backbone / new-layer split of a model's parameters that the learning rates follow
(section IV.1: the layers ImageNet weights initialise at the base rate, the new ones at 10x)."""

from __future__ import annotations

from torch import nn


def split_parameters(model: nn.Module, pretrained: list[nn.Module]) -> dict[str, list]:
    """``"backbone"``: the parameters of the ``pretrained`` modules (ImageNet-initialised);
    ``"new"``: all others, in ``model.parameters()`` order."""
    ids = {id(p) for m in pretrained for p in m.parameters()}
    params = list(model.parameters())
    return {
        "backbone": [p for p in params if id(p) in ids],
        "new": [p for p in params if id(p) not in ids],
    }

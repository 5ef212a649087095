"""What the models' ``forward`` returns (transformers' ``modeling_outputs``): every
segmentation model gives ``loss`` / ``loss_terms`` (when targets are given) and ``logits``;
AGEN adds its class maps, CAMs and seeds."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Iterator

import torch


def _is_set(value: Any) -> bool:
    return value is not None and not (isinstance(value, dict) and not value)


class ModelOutput:
    """transformers' ``ModelOutput`` conventions on a dataclass: the fields that are set (not
    None, not an empty dict) in declaration order are its keys, so ``out[0]`` is the first of
    them (``logits`` without targets, ``loss`` with them), ``out["logits"]`` reads by name,
    ``out.to_tuple()`` gives them all, and unpacking takes the set fields in order as it does
    for a transformers model with ``return_dict=False`` (with targets:
    ``loss, loss_terms, logits = out[:3]``)."""

    def keys(self) -> list[str]:
        return [f.name for f in fields(self) if _is_set(getattr(self, f.name))]

    def to_tuple(self) -> tuple:
        return tuple(getattr(self, k) for k in self.keys())

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def __getitem__(self, key: int | slice | str) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(
                    f"{key!r} is not set in this {type(self).__name__} (set: "
                    f"{', '.join(self.keys())})"
                )
            return getattr(self, key)
        return self.to_tuple()[key]

    def __contains__(self, key: object) -> bool:
        return key in self.keys()

    def __iter__(self) -> Iterator[str]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())


@dataclass
class SegmenterOutput(ModelOutput):
    """Attributes:
    loss: the training loss (when targets are given), the sum of ``loss_terms``.
    loss_terms: every term of the loss by name.
    logits: segmentation logits (B, num_labels, h, w).
    """

    loss: torch.Tensor | None = None
    loss_terms: dict[str, torch.Tensor] = field(default_factory=dict)
    logits: torch.Tensor | None = None


@dataclass
class AgenOutput(SegmenterOutput):
    """What :meth:`agen_hf.AgenModel.forward` returns.

    Heads are named ``"A"`` (classification branch A, paired with segmentation branch B) and
    ``"agm3"``/``"agm4"``/``"agm5"``.

    Attributes:
        loss: L_total of eq. 15 (when image-level labels are given), or the fully supervised
            upper bound's cross-entropy of branch B (when masks are given).
        loss_terms: every term by name: ``cls_A``, ``cls_agm5``..., ``seg_B``, ``seg_agm5``...,
            ``boundary``; ``seg_B_full`` for the upper bound.
        logits: branch B's segmentation logits (B, num_labels, ceil(H/s), ceil(W/s)), s its output
            stride (8 for the paper's ResNet-38).
        class_logits: ``GAP(F_c)`` of every head (B, C), or its log-sum-exp pooling
            (``config.lse_pooling_r``); ``sigmoid`` gives ``p`` of eq. 1.
        class_maps: class-aware maps ``F_c`` of every head (B, C, h, w), after CoAM where on.
        class_maps_before_coam: AGM maps before CoAM, for the stages that have one.
        agm_logits: segmentation logits of every AGM's branch D at input size (B, C+1, H, W).
        seeds: pseudo labels of every head at input size (B, H, W) (when labels are given).
    """

    class_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    class_maps: dict[str, torch.Tensor] = field(default_factory=dict)
    class_maps_before_coam: dict[str, torch.Tensor] = field(default_factory=dict)
    agm_logits: dict[str, torch.Tensor] = field(default_factory=dict)
    seeds: dict[str, torch.Tensor] = field(default_factory=dict)

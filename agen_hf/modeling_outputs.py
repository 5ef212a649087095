"""What the models' ``forward`` returns (transformers' ``modeling_outputs``): every
segmentation model gives ``loss`` / ``loss_terms`` (when targets are given) and ``logits``;
AGEN adds its class maps, CAMs and seeds."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SegmenterOutput:
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
        logits: branch B's segmentation logits (B, num_labels, ceil(H/8), ceil(W/8)).
        class_logits: ``GAP(F_c)`` of every head (B, C); ``sigmoid`` gives ``p`` of eq. 1.
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

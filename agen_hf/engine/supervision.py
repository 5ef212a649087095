"""What a training step learns from, as the model's inputs for one batch: the image-level labels
(eq. 15, AGEN's weak supervision; eq. 11 alone for a first, classification-only phase) or the
pixel masks (branch B alone against them: the fully supervised upper bound, and step two's
DeepLab on pseudo labels)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Supervision:
    """``masks``: train from the batch's masks (``segmentation_only``); else from its
    image-level ``labels``, with the classification loss alone for the first
    ``classification_steps`` optimizer steps (0: the paper, every loss from the start)."""

    masks: bool = False
    classification_steps: int = 0

    def model_inputs(self, batch: dict, step: int) -> dict[str, torch.Tensor | bool]:
        """The keyword arguments of ``model(...)`` for ``batch`` at optimizer step ``step``
        (the steps done so far)."""
        if self.masks:
            return {
                "pixel_values": batch["pixel_values"],
                "masks": batch["mask"],
                "segmentation_only": True,
            }
        return {
            "pixel_values": batch["pixel_values"],
            "labels": batch["labels"],
            "classification_only": step < self.classification_steps,
        }

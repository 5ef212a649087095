"""Validation with a streaming confusion matrix: every process scores its own shard of the
val set and the matrices are summed, so no prediction is ever gathered."""

from __future__ import annotations

from typing import Callable

import torch
from accelerate import Accelerator
from torch.nn import functional as F
from torch.utils.data import DataLoader, Subset

from ..data.transforms import collate
from ..metrics import StreamingMeanIoU


def shard_loader(dataset, accelerator: Accelerator, batch_size: int,
                 num_workers: int = 0) -> DataLoader:
    """This process's share ``rank::world`` of ``dataset``: each sample scored exactly once
    (Accelerate's even-batches padding would count some twice)."""
    indices = range(accelerator.process_index, len(dataset), accelerator.num_processes)
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False,
                      collate_fn=collate, num_workers=num_workers)


@torch.no_grad()
def evaluate_segmentation(accelerator: Accelerator, predict: Callable[[torch.Tensor], torch.Tensor],
                          loader: DataLoader, num_labels: int, ignore_index: int = 255) -> dict:
    """``predict(pixel_values)`` returns logits (B, num_labels, h, w); they are upsampled to the
    padded batch size, argmaxed and scored where the mask is labelled and the pixel is real."""
    metric = StreamingMeanIoU(num_labels, ignore_index)
    for batch in loader:
        if batch is None:
            continue
        pixel_values = batch["pixel_values"].to(accelerator.device)
        logits = predict(pixel_values).float()
        logits = F.interpolate(logits, size=pixel_values.shape[-2:], mode="bilinear",
                               align_corners=False)
        mask = batch["mask"].clone()
        mask[~batch["valid"]] = ignore_index
        metric.update(logits.argmax(1).cpu(), mask)
    total = accelerator.reduce(metric.confusion.to(accelerator.device), "sum")
    metric.confusion = total.cpu()
    return metric.compute()

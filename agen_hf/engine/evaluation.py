"""Validation with a streaming confusion matrix: every process scores its own shard of the
val set and the matrices are summed, so no prediction is ever gathered. Every process takes
part in the same collectives whatever its shard holds (bad samples only, or nothing), and
scores with the main process's weights and buffers, so any number of processes gives the
numbers of one."""

from __future__ import annotations

import logging
from typing import Any, Callable

import torch
from accelerate import Accelerator
from torch.nn import functional as F
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Subset

from ..crf import CrfPool
from ..data.transforms import collate
from ..metrics import StreamingMeanIoU
from ..progress import progress
from .accelerator import base_model
from .distributed import broadcast_buffers, gather_objects, sum_over_processes

logger = logging.getLogger("agen_hf.train")


def collate_scored(samples: list[dict[str, Any]]) -> tuple[dict[str, Any] | None, dict[str, str]]:
    """:func:`~agen_hf.data.transforms.collate`'s batch of the good samples (None when every
    one was bad) and the bad samples that ``skip_bad_samples`` let through, id -> problem."""
    bad = {s["id"]: s.get("error") or "bad sample" for s in samples if s["pixel_values"] is None}
    return collate(samples), bad


def shard_loader(
    dataset, accelerator: Accelerator, batch_size: int, num_workers: int = 0
) -> DataLoader:
    """This process's share ``rank::world`` of ``dataset`` (empty when the split has fewer
    samples than processes): each sample scored exactly once (Accelerate's even-batches
    padding would count some twice). Batches are ``(batch, bad samples)``
    (:func:`collate_scored`)."""
    indices = range(accelerator.process_index, len(dataset), accelerator.num_processes)
    return DataLoader(
        Subset(dataset, list(indices)),
        batch_size=batch_size,
        shuffle=False,
        collate_fn=collate_scored,
        num_workers=num_workers,
    )


def summed_over_processes(
    accelerator: Accelerator, metric: StreamingMeanIoU, what: str = "the confusion-matrix sum"
) -> StreamingMeanIoU:
    """``metric`` over every process's images: the confusion matrices summed (one all-reduce,
    named ``what``), in place; the same ``metric`` returned."""
    metric.confusion = sum_over_processes(accelerator, metric.confusion, what).cpu()
    return metric


def merged(dicts: list[dict]) -> dict:
    """One dict of every process's dict (:func:`~agen_hf.engine.distributed.gather_objects`),
    keys sorted."""
    return dict(sorted((k, v) for d in dicts for k, v in d.items()))


@torch.no_grad()
def evaluate_segmentation(
    accelerator: Accelerator,
    predict: Callable[[torch.Tensor], torch.Tensor],
    loader: DataLoader,
    num_labels: int,
    ignore_index: int = 255,
    crf: CrfPool | None = None,
    unnormalize: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> dict:
    """Mean IoU of ``predict`` over this process's ``loader``, summed over processes.

    ``predict(pixel_values)`` returns class scores (B, num_labels, h, w) whose softmax is the
    class probability (logits, or log-probabilities); they are upsampled to the padded batch
    size and each image is scored inside its own size. With ``crf``, each image's prediction
    is refined by the dense CRF (over a process pool) on the RGB image that ``unnormalize``
    recovers from ``pixel_values``. ``skipped_samples`` in the result names the samples of
    every process's loader that were not scored (bad samples skipped by
    ``skip_bad_samples``: id -> problem), ``skipped`` counts them. Every process takes part in
    the same two collectives, whatever its loader held.
    """
    if crf is not None and unnormalize is None:
        raise ValueError("evaluate_segmentation: crf needs unnormalize to recover the RGB image")
    metric = StreamingMeanIoU(num_labels, ignore_index)
    skipped: dict[str, str] = {}
    for batch, bad in progress(loader, desc="validation", main_process=accelerator.is_main_process):
        skipped.update(bad)
        if batch is None:
            continue
        pixel_values = batch["pixel_values"].to(accelerator.device)
        scores = predict(pixel_values).float()
        if scores.shape[-2:] != pixel_values.shape[-2:]:
            scores = F.interpolate(
                scores, size=pixel_values.shape[-2:], mode="bilinear", align_corners=False
            )
        labels = scores.argmax(1).cpu()
        for i, (h, w) in enumerate(batch["sizes"].tolist()):
            mask = batch["mask"][i, :h, :w]
            if crf is None:
                metric.update(labels[i, :h, :w], mask)
                continue
            rgb = unnormalize(pixel_values[i : i + 1, :, :h, :w])[0]
            rgb = rgb.clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
            probs = scores[i, :, :h, :w].softmax(dim=0)
            for ref, refined in crf.refine(
                rgb, labels[i, :h, :w], lambda classes: probs[torch.as_tensor(classes)], tag=mask
            ):
                metric.update(refined, ref)
    for ref, refined in crf.finish() if crf is not None else []:
        metric.update(refined, ref)
    summed_over_processes(accelerator, metric, "the validation's confusion-matrix sum")
    skipped = merged(gather_objects(skipped, "the validation's list of skipped samples"))
    if skipped and accelerator.is_main_process:
        logger.warning(
            "%d bad samples skipped and not scored (over %d processes): %s",
            len(skipped),
            accelerator.num_processes,
            "; ".join(f"{k} ({v})" for k, v in skipped.items()),
        )
    return {**metric.compute(), "skipped": len(skipped), "skipped_samples": skipped}


def validate(
    accelerator: Accelerator,
    model,
    val_loader: DataLoader,
    step: int,
    epoch: int,
    with_tracking: bool = False,
) -> dict:
    """The mean IoU of ``model``'s segmentation (``model(x, segmentation_only=True).logits``:
    branch B for AGEN) on ``val_loader``, logged (and tracked per class at ``step``).

    Under DDP every process first takes the main process's buffers (the batch-norm running
    statistics that it saves; each process's own moved with its own batches) and then scores
    through the model inside the DDP wrapper: a DDP forward would broadcast the buffers
    itself, but only on a process that has a batch, and a process whose shard was empty or
    all bad would meet that broadcast with its confusion-matrix sum and hang."""
    config = base_model(accelerator, model).config
    scorer = model.module if isinstance(model, DistributedDataParallel) else model
    broadcast_buffers(scorer, "the validation's batch-norm statistics from the main process")
    scorer.eval()
    metrics = evaluate_segmentation(
        accelerator,
        lambda x: scorer(x, segmentation_only=True).logits,
        val_loader,
        config.num_labels,
        config.ignore_index,
    )
    scorer.train()
    logger.info("epoch %d: val mIoU %.2f%%", epoch, 100 * metrics["mean_iou"])
    if with_tracking:
        per_class = {
            f"val/iou_{name}": float(v)
            for name, v in zip(config.label_names, metrics["per_category_iou"])
        }
        accelerator.log({"val/mean_iou": metrics["mean_iou"], **per_class}, step=step)
    return metrics

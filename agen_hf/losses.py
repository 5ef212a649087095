"""AGEN's losses (eq. 10-15). Pure functions on tensors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.nn import functional as F

from .crf import CrfParams, crf_refine
from .upsampling import upsample_bilinear


@dataclass(frozen=True)
class ProcessGroup:
    """How batch-wide means are pooled over ``world_size`` data-parallel processes: ``sum``
    adds a tensor over them (``lambda t: accelerator.reduce(t, "sum")``)."""

    world_size: int
    sum: Callable[[torch.Tensor], torch.Tensor]

    @staticmethod
    def pool(process_group: "ProcessGroup | None", counts: torch.Tensor):
        """Global counts and the factor W that undoes DDP's gradient averaging."""
        if process_group is None or process_group.world_size == 1:
            return counts, 1.0
        return process_group.sum(counts.detach().clone()), float(process_group.world_size)


def multilabel_loss(scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. 10: sigmoid cross-entropy, summed over the C classes, mean over the batch.

    scores: the logits ``GAP(F_c)`` (B, C), so ``p_c = sigmoid(GAP(F_c))`` (eq. 1 with its sign
    typo fixed), or another pooling of ``F_c`` (:func:`agen_hf.cam.class_scores`); labels:
    multi-hot (B, C). Computed stably from the logits.
    """
    if scores.shape != labels.shape:
        raise ValueError(
            f"multilabel_loss: scores {tuple(scores.shape)} and labels "
            f"{tuple(labels.shape)} differ in shape"
        )
    per_class = F.binary_cross_entropy_with_logits(
        scores, labels.to(scores.dtype), reduction="none"
    )
    return per_class.sum(dim=1).mean()


EXP_FLOOR = -87.0  # exp(-87) = 1.6e-38, just above float32's smallest normal number (1.2e-38)


class _WeightedNll(torch.autograd.Function):
    """``sum_u w_u (logsumexp_k z_uk - z_u,t_u)`` over logits ``z`` (B, K, N) with the classes
    in the middle, targets ``t`` and weights ``w`` (B, N): eq. 12's weighted ``-log S_{u,t}``
    in one pass over the logits, its gradient ``w_u (softmax(z_u) - onehot(t_u))`` in one more.

    ``F.log_softmax`` + ``gather`` compute the same (to float rounding) but, at the
    quickstart's 16 x 21 x 64^2, write three logit-sized tensors more (the log-probabilities,
    the gather's zero-filled gradient, the softmax's gradient): 4.6 vs 4.0 ms forward +
    backward a head on a 2-core CPU whose freed memory is reused, 9 vs 4.2 ms where it page-faults
    (BENCHMARKS.md). The softmax reductions run over the middle dimension, so
    every elementwise step is contiguous along the N pixels.

    ``z - max`` is floored at :data:`EXP_FLOOR` before the exponential: a CPU's vectorised
    ``exp`` takes a slow path for every result below float32's smallest normal number (5-15x
    slower over a logit-sized tensor, measured), which a trained network's logits reach for
    most classes at most pixels. The floor changes no loss value (``total`` >= 1 cannot see
    terms of 1e-38) and a gradient entry by at most 2e-38."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, target: torch.Tensor, weight: torch.Tensor):
        peak = z.amax(dim=1, keepdim=True)
        # kept for the gradient: softmax = exp / total
        exp = torch.sub(z, peak).clamp_min_(EXP_FLOOR).exp_()
        total = exp.sum(dim=1)
        logsumexp = total.log().add_(peak.squeeze(1))
        picked = z.gather(1, target.unsqueeze(1)).squeeze(1)
        ctx.save_for_backward(exp, total, target, weight)
        return torch.sum((logsumexp - picked) * weight)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        exp, total, target, weight = ctx.saved_tensors
        w = weight * grad
        # out of place: a second backward (retain_graph=True) reads the saved exp again
        grad_z = exp * (w / total).unsqueeze(1)
        grad_z.scatter_add_(1, target.unsqueeze(1), -w.unsqueeze(1))
        return grad_z, None, None


def balanced_seeding_loss(
    seg_logits: torch.Tensor,
    seeds: torch.Tensor,
    ignore_index: int = 255,
    process_group: ProcessGroup | None = None,
) -> torch.Tensor:
    """Eq. 12 over the whole batch: the mean of ``-log S_{u,c}`` over foreground seed pixels
    (each at its seed's class) plus the same mean over background seed pixels (class 0).

    seg_logits: (B, C+1, H, W); seeds: (B, H, W) int64 with 0 = background, 1..C foreground,
    ``ignore_index`` unassigned. A term with no seed pixels contributes 0. Computed in fp32
    as one weighted sum, each seed pixel weighted by 1 / its group's count
    (:class:`_WeightedNll`).

    process_group: in data-parallel training, the means divide by the seed counts of the
    global batch and are scaled by the number of processes W, so that the gradient DDP
    averages, and the loss averaged over processes, are those of eq. 12 on the global batch.
    """
    if seg_logits.shape[-2:] != seeds.shape[-2:] or seg_logits.shape[0] != seeds.shape[0]:
        raise ValueError(
            f"balanced_seeding_loss: seg_logits {tuple(seg_logits.shape)} and seeds "
            f"{tuple(seeds.shape)} must share batch and spatial size"
        )
    b, k = seg_logits.shape[:2]
    seeds = seeds.reshape(b, -1)
    valid = seeds != ignore_index
    background, foreground = valid & (seeds == 0), valid & (seeds > 0)
    counts = torch.stack([background.sum(), foreground.sum()]).float()
    counts, scale = ProcessGroup.pool(process_group, counts)
    share = 1.0 / counts.clamp_min(1)
    weight = torch.where(background, share[0], torch.where(foreground, share[1], 0.0))
    target = torch.where(valid, seeds, 0)
    logits = seg_logits.float().reshape(b, k, -1)
    return _WeightedNll.apply(logits, target, weight) * scale


def fully_supervised_loss(
    seg_logits: torch.Tensor,
    masks: torch.Tensor,
    ignore_index: int = 255,
    process_group: ProcessGroup | None = None,
) -> torch.Tensor:
    """The upper bound's loss: pixel-wise cross-entropy of the logits (B, C+1, h, w),
    bilinearly upsampled to the masks' size, against ground-truth masks (B, H, W), averaged
    over the labelled pixels of the (global) batch."""
    logits = upsample_bilinear(seg_logits.float(), masks.shape[-2:])
    nll = F.cross_entropy(logits, masks.long(), ignore_index=ignore_index, reduction="sum")
    count, scale = ProcessGroup.pool(process_group, (masks != ignore_index).sum().to(nll.dtype))
    return nll / count.clamp_min(1) * scale


def boundary_loss(
    images: torch.Tensor,
    seg_logits: torch.Tensor,
    image_labels: torch.Tensor | None = None,
    params: CrfParams = CrfParams(),
    backend: str = "pydensecrf",
    processes: int = 0,
) -> torch.Tensor:
    """Eq. 14: ``mean_u sum_c R_uc log(R_uc / S_uc)`` with ``R = CRF(I, S)`` held constant.
    ``processes``: CRF worker processes for the batch's images (0: one after the other).

    images: (B, 3, H, W) RGB in 0..255 at input resolution; seg_logits: (B, C+1, h, w). The CRF
    runs at the logits' resolution on the image resized to it (kernel stds scaled by H / h),
    restricted to background + the classes in ``image_labels`` (B, C) (all when None).
    """
    b, k, h, w = seg_logits.shape
    log_s = F.log_softmax(seg_logits.float(), dim=1)
    small = F.interpolate(
        images.float(), size=(h, w), mode="bilinear", align_corners=False, antialias=True
    )
    present = torch.ones(b, k, dtype=torch.bool, device=seg_logits.device)
    if image_labels is not None:
        present[:, 1:] = image_labels.bool()
    factor = images.shape[-2] / h
    refined = crf_refine(
        small, log_s.detach().exp(), present, params.scaled(factor), backend, processes
    )
    kl = torch.xlogy(refined, refined) - refined * log_s
    return kl.sum(dim=1).mean()

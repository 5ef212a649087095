"""Mean IoU from one streaming confusion matrix: memory independent of the dataset size, and
a state that sums across processes."""

from __future__ import annotations

import numpy as np
import torch


class StreamingMeanIoU:
    """Accumulates a (num_labels, num_labels) confusion matrix (rows: ground truth, columns:
    prediction) over any number of ``update`` calls; pixels whose reference is
    ``ignore_index`` are left out. ``compute()`` returns the keys of the Hub ``mean_iou``
    metric; classes absent from both prediction and reference get NaN IoU and are left out of
    the means, as there."""

    def __init__(self, num_labels: int, ignore_index: int = 255) -> None:
        if num_labels < 2:
            raise ValueError(f"num_labels: must be >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.confusion = torch.zeros(num_labels, num_labels, dtype=torch.int64)

    def update(self, predictions, references) -> None:
        """predictions, references: integer maps of equal shape, (H, W) or (B, H, W), as tensors
        or arrays."""
        pred = torch.as_tensor(np.asarray(predictions) if not torch.is_tensor(predictions)
                               else predictions).long().flatten().cpu()
        ref = torch.as_tensor(np.asarray(references) if not torch.is_tensor(references)
                              else references).long().flatten().cpu()
        if pred.shape != ref.shape:
            raise ValueError(f"predictions ({pred.numel()} pixels) and references "
                             f"({ref.numel()} pixels) differ in size")
        keep = ref != self.ignore_index
        pred, ref = pred[keep], ref[keep]
        if ref.numel() and (ref.min() < 0 or ref.max() >= self.num_labels):
            raise ValueError(f"references hold labels outside 0..{self.num_labels - 1} besides "
                             f"ignore_index {self.ignore_index}")
        valid = (pred >= 0) & (pred < self.num_labels)
        n = self.num_labels
        self.confusion += torch.bincount(ref[valid] * n + pred[valid], minlength=n * n).view(n, n)

    def reset(self) -> None:
        self.confusion.zero_()

    def compute(self) -> dict:
        conf = self.confusion.double().numpy()
        tp = np.diag(conf)
        area_label = conf.sum(axis=1)
        area_pred = conf.sum(axis=0)
        union = area_label + area_pred - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = tp / union
            acc = tp / area_label
        return {"mean_iou": float(np.nanmean(iou)), "mean_accuracy": float(np.nanmean(acc)),
                "overall_accuracy": float(tp.sum() / max(area_label.sum(), 1)),
                "per_category_iou": iou, "per_category_accuracy": acc}

"""Mean IoU from one streaming confusion matrix: memory independent of the dataset size, a
state that sums across processes, and the numbers of the Hub ``mean_iou`` metric.

The Hub metric (``evaluate``'s ``mean_iou``) histograms each image with ``np.histogram(...,
bins=num_labels, range=(0, num_labels - 1))``: values outside ``0..num_labels-1`` fall out of
the histograms, so a pixel whose *prediction* is out of range still counts in its reference
class's area (and vice versa). The confusion matrix here has one extra row and column for
"out of range" so that it reproduces that exactly.
"""

from __future__ import annotations

import numpy as np
import torch


def _as_int64(x) -> torch.Tensor:
    if torch.is_tensor(x):
        return x.detach().to("cpu", torch.int64)
    return torch.from_numpy(np.asarray(x).astype(np.int64, copy=False))


def remap_references(references: torch.Tensor, label_map: dict | None,
                     reduce_labels: bool) -> torch.Tensor:
    """The Hub metric's reference preprocessing: ``label_map`` applied entry by entry, in
    order; then ``reduce_labels`` (0 -> 255, every other label minus 1, 254 -> 255)."""
    if label_map:
        references = references.clone()
        for old, new in label_map.items():
            references[references == int(old)] = int(new)
    if reduce_labels:
        references = references.clone()
        references[references == 0] = 255
        references = references - 1
        references[references == 254] = 255
    return references


class StreamingMeanIoU:
    """Accumulates a confusion matrix (rows: reference, columns: prediction, plus an
    out-of-range row and column) over any number of ``update`` calls; pixels whose reference
    is ``ignore_index`` are left out. ``compute()`` returns the keys and numbers of the Hub
    ``mean_iou`` metric."""

    def __init__(self, num_labels: int, ignore_index: int = 255, label_map: dict | None = None,
                 reduce_labels: bool = False) -> None:
        if num_labels < 2:
            raise ValueError(f"num_labels: must be >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.reduce_labels = reduce_labels
        self.confusion = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64)

    def update(self, predictions, references) -> None:
        """predictions, references: integer maps of equal shape, one (H, W) or a batch
        (B, H, W), as tensors or arrays."""
        pred, ref = _as_int64(predictions).flatten(), _as_int64(references)
        ref = remap_references(ref, self.label_map, self.reduce_labels).flatten()
        if pred.shape != ref.shape:
            raise ValueError(f"predictions ({pred.numel()} pixels) and references "
                             f"({ref.numel()} pixels) differ in size")
        keep = ref != self.ignore_index
        pred, ref = pred[keep], ref[keep]
        n = self.num_labels
        pred = torch.where((pred >= 0) & (pred < n), pred, n)  # n: out of range
        ref = torch.where((ref >= 0) & (ref < n), ref, n)
        self.confusion += torch.bincount(ref * (n + 1) + pred,
                                         minlength=(n + 1) ** 2).view(n + 1, n + 1)

    def reset(self) -> None:
        self.confusion.zero_()

    def compute(self, nan_to_num: float | None = None) -> dict:
        n = self.num_labels
        conf = self.confusion.double().numpy()
        intersect = np.diag(conf)[:n]
        area_label = conf[:n].sum(axis=1)
        area_pred = conf[:, :n].sum(axis=0)
        union = area_pred + area_label - intersect
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = intersect / union
            acc = intersect / area_label
            overall = intersect.sum() / area_label.sum()
        metrics = {"mean_iou": np.nanmean(iou) if not np.isnan(iou).all() else np.nan,
                   "mean_accuracy": np.nanmean(acc) if not np.isnan(acc).all() else np.nan,
                   "overall_accuracy": overall, "per_category_iou": iou,
                   "per_category_accuracy": acc}
        if nan_to_num is not None:
            metrics = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in metrics.items()}
        return metrics

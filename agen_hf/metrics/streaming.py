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


def _as_array(x) -> np.ndarray:
    if torch.is_tensor(x):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def _as_byte_codes(values: np.ndarray) -> torch.Tensor | None:
    """An integer map whose values all fit in 0..255 (a uint8 PNG, an int64 argmax) as an
    int32 tensor, for the byte-pair path of :meth:`StreamingMeanIoU.update`; else None."""
    if values.dtype.kind not in "iub":
        return None
    if values.dtype not in (np.uint8, np.bool_) and values.size:
        if values.dtype.kind == "u" or values.dtype.itemsize > 1:
            # one pass: a negative value or one above 255 has a bit above the lowest 8 set
            if np.bitwise_or.reduce(values) & ~0xFF:
                return None
        elif values.min() < 0:  # int8
            return None
    return torch.from_numpy(values.astype(np.int32))


# Byte pairs are counted in LANES interleaved histograms (pixel u into lane u % LANES): a run
# of equal pixels, the common case in a segmentation, would otherwise increment one counter
# over and over, each increment waiting for the one before. Two lanes measured fastest on the
# VOC val masks (4 and 8 cost more in adding their larger histograms than they save).
LANES = 2
_lanes = torch.zeros(0, dtype=torch.int32)


def _lane_offsets(n: int) -> torch.Tensor:
    """(n,) int32: ``(u % LANES) << 16`` for pixel u (cached, grown as needed)."""
    global _lanes
    if _lanes.numel() < n:
        _lanes = (torch.arange(max(n, 1 << 18), dtype=torch.int32) % LANES) << 16
    return _lanes[:n]


def pair_counts(references: torch.Tensor, predictions: torch.Tensor) -> torch.Tensor:
    """(LANES * 65536,) int64 counts of the byte pairs ``reference << 8 | prediction`` of two
    flat int32 maps with values in 0..255, lane by lane (sum the lanes for the counts)."""
    code = references.bitwise_left_shift_(8).bitwise_or_(predictions)
    code.bitwise_or_(_lane_offsets(code.numel()))
    return torch.bincount(code, minlength=LANES << 16)


def remap_references(
    references: np.ndarray, label_map: dict | None, reduce_labels: bool
) -> np.ndarray:
    """The Hub metric's reference preprocessing: ``label_map`` applied entry by entry, in
    order; then ``reduce_labels`` (0 -> 255, every other label minus 1, 254 -> 255)."""
    if label_map:
        references = references.copy()
        for old, new in label_map.items():
            references[references == int(old)] = int(new)
    if reduce_labels:
        references = references.astype(np.int64)  # the Hub's 0 - 1 -> 254 needs no wrap
        references[references == 0] = 255
        references = references - 1
        references[references == 254] = 255
    return references


class StreamingMeanIoU:
    """Accumulates a confusion matrix (rows: reference, columns: prediction, plus an
    out-of-range row and column) over any number of ``update`` calls; pixels whose reference
    is ``ignore_index`` are left out. ``compute()`` returns the keys and numbers of the Hub
    ``mean_iou`` metric."""

    def __init__(
        self,
        num_labels: int,
        ignore_index: int = 255,
        label_map: dict | None = None,
        reduce_labels: bool = False,
    ) -> None:
        if num_labels < 2:
            raise ValueError(f"num_labels: must be >= 2, got {num_labels}")
        self.num_labels = num_labels
        self.ignore_index = ignore_index
        self.label_map = label_map
        self.reduce_labels = reduce_labels
        self._confusion = torch.zeros(num_labels + 1, num_labels + 1, dtype=torch.int64)
        # 8-bit maps (VOC's PNGs): counts of every (reference, prediction) byte pair (in
        # LANES interleaved histograms), folded into the confusion matrix only when it is read
        self._pairs = torch.zeros(LANES << 16, dtype=torch.int64)
        self._pairs_pending = False

    @property
    def confusion(self) -> torch.Tensor:
        """(num_labels + 1, num_labels + 1) int64: rows reference, columns prediction, the
        last row/column "out of range". Sum it across processes and assign it back."""
        if self._pairs_pending:
            self._confusion += torch.from_numpy(self._fold_pairs())
            self._pairs[:] = 0
            self._pairs_pending = False
        return self._confusion

    @confusion.setter
    def confusion(self, value: torch.Tensor) -> None:
        n1 = self.num_labels + 1
        if tuple(value.shape) != (n1, n1):
            raise ValueError(f"confusion: expected shape ({n1}, {n1}), got {tuple(value.shape)}")
        self._pairs[:] = 0
        self._pairs_pending = False
        self._confusion = value.to(torch.int64)

    def _fold_pairs(self) -> np.ndarray:
        """The 256 x 256 byte-pair counts as confusion-matrix bins (one-hot products)."""
        n, n1 = self.num_labels, self.num_labels + 1
        values = np.arange(256)
        rows = np.eye(n + 2, dtype=np.int64)[self._bins(values, n + 1)]
        cols = np.eye(n1, dtype=np.int64)[self._bins(values, None)]
        pairs = self._pairs.reshape(LANES, 256, 256).sum(0).numpy()
        return (rows.T @ pairs @ cols)[:n1]

    def update(self, predictions, references) -> None:
        """predictions, references: integer maps of equal shape, one (H, W) or a batch
        (B, H, W), as tensors or arrays."""
        pred = _as_array(predictions).ravel()
        ref = remap_references(_as_array(references), self.label_map, self.reduce_labels).ravel()
        if pred.shape != ref.shape:
            raise ValueError(
                f"predictions ({pred.size} pixels) and references "
                f"({ref.size} pixels) differ in size"
            )
        pred_codes = _as_byte_codes(pred)
        ref_codes = _as_byte_codes(ref) if pred_codes is not None else None
        if ref_codes is not None:
            self._pairs += pair_counts(ref_codes, pred_codes)
            self._pairs_pending = True
            return
        n, n1 = self.num_labels, self.num_labels + 1
        # rows: reference class, n (out of range), n + 1 (ignored, dropped below)
        row = self._bins(ref, ignored_bin=n + 1)
        col = self._bins(pred, ignored_bin=None)
        counts = np.bincount(row * n1 + col, minlength=(n + 2) * n1)[: n1 * n1]
        self.confusion += torch.from_numpy(counts.reshape(n1, n1))

    def _bins(self, values: np.ndarray, ignored_bin: int | None) -> np.ndarray:
        """Class index, ``num_labels`` for out of range, ``ignored_bin`` for ignore_index."""
        n = self.num_labels
        v = values if values.dtype.kind == "i" else values.astype(np.int64)
        out = np.minimum(v, n).astype(np.int64, copy=False)
        if v.size and v.min() < 0:
            out[v < 0] = n
        if ignored_bin is not None:
            out[v == self.ignore_index] = ignored_bin
        return out

    def reset(self) -> None:
        self.confusion = torch.zeros_like(self._confusion)

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
        metrics = {
            "mean_iou": np.nanmean(iou) if not np.isnan(iou).all() else np.nan,
            "mean_accuracy": np.nanmean(acc) if not np.isnan(acc).all() else np.nan,
            "overall_accuracy": overall,
            "per_category_iou": iou,
            "per_category_accuracy": acc,
        }
        if nan_to_num is not None:
            metrics = {k: np.nan_to_num(v, nan=nan_to_num) for k, v in metrics.items()}
        return metrics

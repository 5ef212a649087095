"""Mean IoU as an ``evaluate`` metric that loads offline: ``evaluate.load(agen_hf.metrics.
MEAN_IOU)``. Same inputs and outputs as the Hub's ``mean_iou``, the same numbers (its
per-image histogram algorithm), computed with one vectorised confusion matrix."""

import datasets
import evaluate
import numpy as np
from PIL import Image

from agen_hf.metrics.streaming import StreamingMeanIoU

_DESCRIPTION = """Mean intersection over union of semantic segmentation maps, with mean and
overall pixel accuracy and per-category IoU and accuracy."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer label maps (arrays, tensors, lists or single-channel
        PIL images, e.g. VOC's palette PNGs).
    references: list of (H, W) integer ground-truth maps, in the same forms.
    num_labels (int): number of classes.
    ignore_index (int): reference value left out of the evaluation (e.g. 255).
    nan_to_num (float, optional): replaces NaN (classes absent from both) in the results.
    label_map (dict, optional): old id -> new id, applied to the references in order.
    reduce_labels (bool): references 0 -> 255 and every other label minus 1.
Returns:
    mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy.
"""


def _as_map(value, name: str):
    """A PIL image (mode P, L, I;16, I: one class index per pixel) as its (H, W) array; other
    inputs (arrays, tensors, nested lists) as they are."""
    if isinstance(value, Image.Image):
        array = np.array(value)
        if array.ndim != 2:
            raise ValueError(
                f"{name}: a class-index map has one channel (PIL mode P, L, I;16 "
                f"or I), got mode {value.mode}"
            )
        return array
    return value


def _as_maps(values, name: str):
    if values is None:
        return None
    return [_as_map(v, f"{name}[{i}]") for i, v in enumerate(values)]


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                    "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                }
            ),
        )

    # evaluate appends the inputs' description to these three docstrings
    def compute(self, *, predictions=None, references=None, **kwargs):
        """Mean IoU of all the maps added and given (PIL images read as index maps)."""
        return super().compute(
            predictions=_as_maps(predictions, "predictions"),
            references=_as_maps(references, "references"),
            **kwargs,
        )

    def add_batch(self, *, predictions=None, references=None, **kwargs):
        """Add a batch of maps (PIL images read as index maps)."""
        return super().add_batch(
            predictions=_as_maps(predictions, "predictions"),
            references=_as_maps(references, "references"),
            **kwargs,
        )

    def add(self, *, prediction=None, reference=None, **kwargs):
        """Add one map (a PIL image read as an index map)."""
        return super().add(
            prediction=_as_map(prediction, "prediction"),
            reference=_as_map(reference, "reference"),
            **kwargs,
        )

    def _compute(
        self,
        predictions,
        references,
        num_labels: int,
        ignore_index: int,
        nan_to_num=None,
        label_map=None,
        reduce_labels: bool = False,
    ):
        metric = StreamingMeanIoU(num_labels, ignore_index, label_map, reduce_labels)
        for pred, ref in zip(predictions, references):
            metric.update(pred, ref)
        return metric.compute(nan_to_num)

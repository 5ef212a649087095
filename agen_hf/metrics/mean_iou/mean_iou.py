"""Mean IoU as an ``evaluate`` metric that loads offline: ``evaluate.load(agen_hf.metrics.
MEAN_IOU)``. Same inputs and outputs as the Hub's ``mean_iou``, the same numbers (its
per-image histogram algorithm), computed with one vectorised confusion matrix."""

import datasets
import evaluate

from agen_hf.metrics.streaming import StreamingMeanIoU

_DESCRIPTION = """Mean intersection over union of semantic segmentation maps, with mean and
overall pixel accuracy and per-category IoU and accuracy."""

_KWARGS_DESCRIPTION = """
Args:
    predictions: list of (H, W) integer label maps.
    references: list of (H, W) integer ground-truth maps.
    num_labels (int): number of classes.
    ignore_index (int): reference value left out of the evaluation (e.g. 255).
    nan_to_num (float, optional): replaces NaN (classes absent from both) in the results.
    label_map (dict, optional): old id -> new id, applied to the references in order.
    reduce_labels (bool): references 0 -> 255 and every other label minus 1.
Returns:
    mean_iou, mean_accuracy, overall_accuracy, per_category_iou, per_category_accuracy.
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class MeanIoU(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({
                "predictions": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
                "references": datasets.Sequence(datasets.Sequence(datasets.Value("uint16"))),
            }),
        )

    def _compute(self, predictions, references, num_labels: int, ignore_index: int,
                 nan_to_num=None, label_map=None, reduce_labels: bool = False):
        metric = StreamingMeanIoU(num_labels, ignore_index, label_map, reduce_labels)
        for pred, ref in zip(predictions, references):
            metric.update(pred, ref)
        return metric.compute(nan_to_num)

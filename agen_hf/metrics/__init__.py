"""Segmentation metrics: a streaming confusion-matrix mean IoU, and the same metric as an
``evaluate`` module that loads offline from ``MEAN_IOU`` (a path)."""

from pathlib import Path

from .streaming import StreamingMeanIoU

MEAN_IOU = str(Path(__file__).resolve().parent / "mean_iou")

__all__ = ["MEAN_IOU", "StreamingMeanIoU"]

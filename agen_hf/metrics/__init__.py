"""Segmentation metrics: a streaming confusion-matrix mean IoU."""

from .streaming import StreamingMeanIoU

__all__ = ["StreamingMeanIoU"]

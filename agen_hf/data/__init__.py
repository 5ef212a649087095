"""Data: every source in one schema whose ``labels`` feature names the dataset's classes
(:mod:`agen_hf.data.schema`): PASCAL VOC 2012 (+SBD), MS COCO 2014, a folder of tagged images,
any ``datasets.Dataset``, and the embedded synthetic data; joint image/mask transforms, and
strict handling of bad samples."""

from ..labels import (
    BACKGROUND,
    IGNORE_INDEX,
    VOC_CLASS_NAMES,
    VOC_CLASSES,
    id2label_for,
    voc_palette,
)
from .coco import COCO_CLASS_NAMES, load_coco
from .conform import conform
from .decoding import DataError, VocDataError
from .folder import load_folder
from .schema import class_names, features, multi_hot
from .synthetic import SYNTHETIC_CLASS_NAMES, make_synthetic, render_sample
from .voc import FEATURES, NUM_CLASSES, load_voc

__all__ = [
    "BACKGROUND",
    "COCO_CLASS_NAMES",
    "DataError",
    "FEATURES",
    "IGNORE_INDEX",
    "NUM_CLASSES",
    "SYNTHETIC_CLASS_NAMES",
    "VOC_CLASSES",
    "VOC_CLASS_NAMES",
    "VocDataError",
    "class_names",
    "conform",
    "features",
    "id2label_for",
    "load_coco",
    "load_folder",
    "load_voc",
    "make_synthetic",
    "multi_hot",
    "render_sample",
    "voc_palette",
]

"""Data: PASCAL VOC 2012 (+SBD) and the embedded synthetic dataset through `datasets`, joint
image/mask transforms, and strict handling of bad samples."""

from .samples import IGNORE_INDEX, NUM_CLASSES, VocDataError, voc_palette
from .synthetic import make_synthetic, render_sample
from .voc import FEATURES, load_voc

__all__ = ["FEATURES", "IGNORE_INDEX", "NUM_CLASSES", "VocDataError", "load_voc",
           "make_synthetic", "render_sample", "voc_palette"]

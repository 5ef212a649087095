"""Per-class IoU as the paper prints it (Table 4: background, the 20 VOC classes, mIoU)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..configuration_agen import VOC_CLASSES

# Table 4's column names for VOC's classes, in label order
TABLE4_COLUMNS = ("bkg", "plane", "bike", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
                  "cow", "table", "dog", "horse", "motor", "person", "plant", "sheep", "sofa",
                  "train", "tv")


def iou_table(per_category_iou: Sequence[float], mean_iou: float,
              class_names: Sequence[str] = VOC_CLASSES, row_name: str = "AGEN") -> str:
    """A Markdown table in Table 4's layout: one column per class then mIoU, values in %.
    VOC's class names get the paper's short column names."""
    names = TABLE4_COLUMNS if tuple(class_names) == VOC_CLASSES else tuple(class_names)
    if len(names) != len(per_category_iou):
        raise ValueError(f"iou_table: {len(per_category_iou)} IoUs for {len(names)} classes")
    values = [*per_category_iou, mean_iou]
    cells = ["-" if np.isnan(v) else f"{100 * v:.1f}" for v in values]
    widths = [max(len(n), len(c)) for n, c in zip([*names, "mIoU"], cells)]
    head = ["Method", *names, "mIoU"]
    widths = [max(len(row_name), 6), *widths]

    def line(cols):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cols, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(head), rule, line([row_name, *cells])])


def class_iou_markdown(per_category_iou: Sequence[float], mean_iou: float,
                       class_names: Sequence[str]) -> str:
    """A vertical Markdown table (class, IoU %) ending in the mIoU: for model cards."""
    rows = "\n".join(f"| {n} | {100 * v:.1f} |" for n, v in zip(class_names, per_category_iou))
    return f"| class | IoU (%) |\n| --- | --- |\n{rows}\n| **mIoU** | **{100 * mean_iou:.1f}** |"

"""Per-class IoU as the paper prints it (Table 4: background, the 20 VOC classes, mIoU), and as
a readable multi-column table for larger label sets (COCO's 81)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..labels import VOC_CLASSES

# Table 4's column names for VOC's classes, in label order
TABLE4_COLUMNS = (
    "bkg",
    "plane",
    "bike",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "table",
    "dog",
    "horse",
    "motor",
    "person",
    "plant",
    "sheep",
    "sofa",
    "train",
    "tv",
)


def iou_table(
    per_category_iou: Sequence[float],
    mean_iou: float,
    class_names: Sequence[str] = VOC_CLASSES,
    row_name: str = "AGEN",
) -> str:
    """A Markdown table in Table 4's layout: one column per class then mIoU, values in %.
    VOC's class names get the paper's short column names. Beyond ``WIDE_TABLE_MAX`` classes a
    row of columns is unreadable: :func:`iou_columns` instead."""
    names = TABLE4_COLUMNS if tuple(class_names) == VOC_CLASSES else tuple(class_names)
    if len(names) != len(per_category_iou):
        raise ValueError(f"iou_table: {len(per_category_iou)} IoUs for {len(names)} classes")
    if len(names) > WIDE_TABLE_MAX:
        return iou_columns(per_category_iou, mean_iou, names, row_name)
    values = [*per_category_iou, mean_iou]
    cells = ["-" if np.isnan(v) else f"{100 * v:.1f}" for v in values]
    widths = [max(len(n), len(c)) for n, c in zip([*names, "mIoU"], cells)]
    head = ["Method", *names, "mIoU"]
    widths = [max(len(row_name), 6), *widths]

    def line(cols):
        return "| " + " | ".join(c.rjust(w) for c, w in zip(cols, widths)) + " |"

    rule = "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|"
    return "\n".join([line(head), rule, line([row_name, *cells])])


WIDE_TABLE_MAX = 30


def iou_columns(
    per_category_iou: Sequence[float],
    mean_iou: float,
    class_names: Sequence[str],
    row_name: str = "AGEN",
    pairs: int = 4,
) -> str:
    """A Markdown table of ``pairs`` (class, IoU %) column pairs per row, in label order,
    read down each pair of columns, then ``row_name``'s mIoU: 81 classes in 21 lines."""
    cells = [
        (n, "-" if np.isnan(v) else f"{100 * v:.1f}") for n, v in zip(class_names, per_category_iou)
    ]
    rows = -(-len(cells) // pairs)
    cells += [("", "")] * (rows * pairs - len(cells))
    width = max(len(n) for n, _ in cells)
    head = "| " + " | ".join(["class".ljust(width), " IoU"] * pairs) + " |"
    rule = "|" + "|".join(["-" * (width + 2), "----:"] * pairs) + "|"
    lines = [head, rule]
    for r in range(rows):
        row = [cells[c * rows + r] for c in range(pairs)]
        lines.append("| " + " | ".join(f"{n.ljust(width)} | {v.rjust(4)}" for n, v in row) + " |")
    return "\n".join(lines + ["", f"{row_name} mIoU: {100 * mean_iou:.1f}"])


def class_iou_markdown(
    per_category_iou: Sequence[float], mean_iou: float, class_names: Sequence[str]
) -> str:
    """A vertical Markdown table (class, IoU %) ending in the mIoU: for model cards."""
    rows = "\n".join(f"| {n} | {100 * v:.1f} |" for n, v in zip(class_names, per_category_iou))
    return f"| class | IoU (%) |\n| --- | --- |\n{rows}\n| **mIoU** | **{100 * mean_iou:.1f}** |"

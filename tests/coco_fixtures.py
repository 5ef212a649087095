"""A tiny COCO-format root as the tests write it: images, ``instances_<split>.json`` with
polygons, compressed and uncompressed RLE and crowds, sparse category ids."""

import json

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

W, H = 40, 32
CATEGORIES = [
    {"id": 90, "name": "toothbrush"},
    {"id": 1, "name": "person"},
    {"id": 18, "name": "dog"},
    {"id": 3, "name": "car"},
]  # sparse ids, not in order
NAMES = ("person", "car", "dog", "toothbrush")  # ascending id: mask values 1, 2, 3, 4
OFFICIAL_IDS = [i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)]


def stem(split, i):
    return f"COCO_{split}_{i:012d}"


def box(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def rle(x0, y0, x1, y1):
    m = np.zeros((H, W), dtype=np.uint8, order="F")
    m[y0:y1, x0:x1] = 1
    out = mask_utils.encode(m)
    return {"size": out["size"], "counts": out["counts"].decode("ascii")}


def uncompressed_rle(x0, y0, x1, y1):
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    flat = m.flatten(order="F")  # COCO's column-major runs, starting with a 0-run
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    return {"size": [H, W], "counts": ([0] if flat[0] else []) + counts}


def val_annotations():
    """image id -> [(category id, segmentation, iscrowd)], in file order."""
    return {
        # a small car on a large person, listed first: the smaller one ends on top
        1: [
            (3, box(10, 8, 20, 16), 0),
            (1, box(4, 2, 30, 28), 0),
            (90, box(30, 2, 34, 6) + box(35, 20, 39, 30), 0),
        ],  # two polygon parts
        # compressed RLE dog, overlapping a larger toothbrush polygon
        2: [(18, rle(5, 5, 15, 15), 0), (90, box(0, 10, 25, 30), 0)],
        # a crowd of people (uncompressed RLE) over part of a car: ignore wins
        3: [(3, box(2, 2, 20, 20), 0), (1, uncompressed_rle(12, 12, 36, 30), 1)],
        4: [(3, uncompressed_rle(0, 0, 10, 10), 1)],  # crowd only: keeps its label
        # equal areas overlapping: the later annotation on top
        5: [(1, box(0, 0, 10, 10), 0), (18, box(5, 5, 15, 15), 0)],
        6: [],  # no annotation: left out
    }


def write_split(root, split, annotations, categories):
    (root / split).mkdir(parents=True)
    (root / "annotations").mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    images, anns = [], []
    for i, instances in annotations.items():
        name = f"{stem(split, i)}.jpg"
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(root / split / name)
        images.append({"id": i, "file_name": name, "width": W, "height": H})
        for cat, seg, crowd in instances:  # "area" wrong on purpose: the masks' own is used
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "category_id": cat,
                    "segmentation": seg,
                    "iscrowd": crowd,
                    "area": 1.0,
                    "bbox": [0, 0, 1, 1],
                }
            )
    path = root / "annotations" / f"instances_{split}.json"
    path.write_text(
        json.dumps({"images": images[::-1], "annotations": anns, "categories": categories})
    )
    return path

"""MS COCO 2014 (``train2014``, ``val2014``) for weakly supervised segmentation, as a
``datasets.Dataset`` in the schema of :mod:`agen_hf.data.schema` (mask value k + 1 is class k,
0 background, 255 ignore), from one of two sources under the root:

* pre-converted class-index PNG masks in ``SegmentationClass/<split>/<stem>.png`` (values
  1..80 for :data:`COCO_CLASS_NAMES`, as the ToCo/RIB conversion scripts write them): read
  without pycocotools or the annotations; labels are derived from each mask;
* otherwise the instance annotations ``annotations/instances_<split>.json``: parsed once, and
  each image's semantic mask rendered once with ``pycocotools.mask`` (polygons, each within
  its bounding box; uncompressed and compressed RLE) to a palette PNG in the cache
  (``<cache>/coco-<split>-<key>/SegmentationClass/<split>/``), by ``num_workers`` processes.

Either way the index (images and masks referenced by path, never embedded) is cached as Arrow,
so a second load is a memory map (:func:`agen_hf.data.cache.cached_arrow`).

From instances to a semantic mask (:func:`render_mask`):

* category ids (sparse, 1..90 in the official file) map to contiguous classes in ascending id
  order; the class names are the file's own, so any COCO-format file works;
* instances are painted in decreasing area order, so a smaller instance lies on top of a larger
  one it overlaps: overlapping outlines are mostly an occluder and what it occludes (a person
  in front of a sofa), and the occluder is usually the smaller. Equal areas: the later
  annotation of the file on top;
* crowd regions (``iscrowd=1``) are 255 (ignore), painted last so that they stay ignore: a
  crowd's outline covers many instances and the background between them, so a prediction
  there is neither right nor wrong;
* the image-level ``labels`` are the categories of all the image's annotations, crowd included
  (the object is in the image): an image whose only annotations are crowds keeps its labels;
* images without any annotation are left out (and counted in the log), as in the WSSS
  literature: 82,081 of the 82,783 train2014 images, 40,137 of the 40,504 val2014 ones.
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
import math
import os
from collections import defaultdict
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import datasets
import numpy as np
from PIL import Image

from ..labels import IGNORE_INDEX, voc_palette
from ..progress import progress
from .cache import cached_arrow, default_cache_dir, files_key
from .decoding import DataError, decode_mask, describe
from .schema import features, label_ids_from_mask

logger = logging.getLogger(__name__)

COCO_CLASS_NAMES = (
    "person",
    "bicycle",
    "car",
    "motorcycle",
    "airplane",
    "bus",
    "train",
    "truck",
    "boat",
    "traffic light",
    "fire hydrant",
    "stop sign",
    "parking meter",
    "bench",
    "bird",
    "cat",
    "dog",
    "horse",
    "sheep",
    "cow",
    "elephant",
    "bear",
    "zebra",
    "giraffe",
    "backpack",
    "umbrella",
    "handbag",
    "tie",
    "suitcase",
    "frisbee",
    "skis",
    "snowboard",
    "sports ball",
    "kite",
    "baseball bat",
    "baseball glove",
    "skateboard",
    "surfboard",
    "tennis racket",
    "bottle",
    "wine glass",
    "cup",
    "fork",
    "knife",
    "spoon",
    "bowl",
    "banana",
    "apple",
    "sandwich",
    "orange",
    "broccoli",
    "carrot",
    "hot dog",
    "pizza",
    "donut",
    "cake",
    "chair",
    "couch",
    "potted plant",
    "bed",
    "dining table",
    "toilet",
    "tv",
    "laptop",
    "mouse",
    "remote",
    "keyboard",
    "cell phone",
    "microwave",
    "oven",
    "toaster",
    "sink",
    "refrigerator",
    "book",
    "clock",
    "vase",
    "scissors",
    "teddy bear",
    "hair drier",
    "toothbrush",
)  # the 80 categories of instances_{train,val}2014.json, in ascending category id
SPLITS = ("train2014", "val2014")
_CACHE_VERSION = "1"
_CHUNK = 128  # images per rendering task
_PALETTE = voc_palette()

DOWNLOAD_HELP = """\
{missing} was not found. agen_hf never downloads MS COCO; get it once from
https://cocodataset.org/#download and lay it out under the root:
  <root>/train2014/, <root>/val2014/     "2014 Train images", "2014 Val images"
  <root>/annotations/instances_train2014.json, instances_val2014.json
                                         "2014 Train/Val annotations" (needs pycocotools:
                                         pip install agen_hf[coco])
or, instead of the annotations, pre-converted class-index PNG masks (1..80, 0 background,
255 ignore, e.g. from the ToCo/RIB conversion scripts) in
  <root>/SegmentationClass/train2014/, <root>/SegmentationClass/val2014/"""


def _mask_api():
    try:
        from pycocotools import mask
    except ImportError:
        raise ImportError(
            "rendering COCO masks from instances_*.json needs pycocotools: pip "
            "install agen_hf[coco] (or pycocotools), or use pre-converted PNG "
            "masks in <root>/SegmentationClass/<split>/"
        ) from None
    return mask


def _to_rle(mask_api, segmentation, height: int, width: int):
    """One instance's full-frame RLE, as ``pycocotools.coco.COCO.annToRLE`` makes it."""
    if isinstance(segmentation, list):  # polygons: one instance may have several parts
        return mask_api.merge(mask_api.frPyObjects(segmentation, height, width))
    if isinstance(segmentation["counts"], list):  # uncompressed RLE (crowd regions)
        return mask_api.frPyObjects(segmentation, height, width)
    return segmentation  # compressed RLE


_MAX_COORD = 2.0**24  # beyond, (int)(5 * x + .5) overflows or loses the sub-pixel: full frame


def _rounds_alike(start: int, end: int, length: int, shift: int) -> bool:
    """Whether rleFrPoly's step (2) (:func:`_polygon_box`) rounds the minor coordinates of an
    edge (on the lattice from ``start`` to ``end`` after its flip, over ``length`` > 0 major
    steps) alike once translated by ``-shift``: to the same integers less ``shift``."""
    extent = end - start
    den = length // math.gcd(extent, length)  # of s = extent / length in lowest terms
    if den % 2 or not den & (den - 1):  # odd or a power of two: no rounding tie
        return True
    s, moved = extent / length, start - shift  # C: s = (double)(ye - ys) / dx
    return all(
        int(start + s * t + 0.5) - start == int(moved + s * t + 0.5) - moved
        for t in range(den // 2, length + 1, den)
    )  # s * t a half-integer


def _polygon_box(segmentation, height: int, width: int):
    """``(parts, y0, x0, box_height, box_width)``: a polygon instance as pycocotools is to
    rasterise it in the box at (y0, x0) that holds its mask, or None where that is not known
    to be exact (not plain polygons, short or odd parts, non-finite or huge coordinates,
    nothing inside the frame): render the full frame.

    Why the crop is exact. pycocotools' ``rleFrPoly(xy, k, h, w)`` (common/maskApi.c)
    rasterises on a lattice of 1/5 pixel: (1) each vertex goes to X = (int)(5 * x + .5);
    (2) each edge is walked one lattice step at a time along its major axis, t = 0..d, the
    minor coordinate rounded to (int)(c + s * t + .5) from the edge's start c, slope s = D / d;
    (3) where the walk crosses a pixel column's centre line it keeps (column, ceil(row)), rows
    clamped to [0, h], columns outside [0, w) dropped; (4) those points, sorted column-major,
    toggle the runs of the RLE (the walk is closed: each column has an even number of them, no
    run carries into the next column). Every column and row that (3) can keep lies in
    [floor(min), ceil(max)] of the polygon's coordinates, so in the box from o = floor(min) (0
    where that is negative) to ceil(max) + 1, clipped to the frame, a lattice translated by
    -5 o maps each point of (3) to the same point less o, dropped or clamped by the same frame
    edges (where the box is clipped, its edge is the frame's): the runs decode to exactly the
    box of the full-frame mask, which has no pixel outside the box (so its area, which orders
    the painting, is the same too). Two roundings do depend on the translation:

    * (1): 5 * (x - o) + .5 does not always truncate to X - 5 o (x = 12.1, o = 10: 10, not
      11). So the box polygon is given on the lattice already, (X - 5 o) / 5, which (1) rounds
      back to X - 5 o exactly (it lies .5 from the truncation's thresholds);
    * (2): c + s * t + .5 may round to another integer at another magnitude of c where its
      exact value is an integer, i.e. s * t a half-integer; that needs D / d in lowest terms
      to have an even denominator that is not a power of two (else s * t is exact, or at
      least 1 / (2 d) from a half-integer, far beyond the rounding errors), at t an odd
      multiple of half that denominator. Those few points are rounded both ways here, in the
      same double operations (Python floats; the x86-64 wheels compile rleFrPoly to plain
      IEEE ones, without fused multiply-adds), and an axis on which any would round
      differently is not translated (o = 0: a box cut at the far end only is exact), for ~1%
      of polygons per axis.

    tests/unit/test_data_coco.py checks this pixel by pixel against full-frame rendering.
    """
    if not isinstance(segmentation, list) or not segmentation:
        return None
    try:
        parts = [
            [float(c) for c in part]
            for part in segmentation
            if isinstance(part, list) and len(part) >= 6 and not len(part) % 2
        ]
        lattice = [[int(5.0 * c + 0.5) for c in part] for part in parts]  # step (1)
    except (TypeError, ValueError, OverflowError):  # not numbers, NaN, infinite
        return None
    if len(parts) < len(segmentation):
        return None
    x_lo, x_hi = min(min(p[0::2]) for p in parts), max(max(p[0::2]) for p in parts)
    y_lo, y_hi = min(min(p[1::2]) for p in parts), max(max(p[1::2]) for p in parts)
    if max(-x_lo, x_hi, -y_lo, y_hi) >= _MAX_COORD:
        return None
    x0, x1 = max(0, math.floor(x_lo)), min(width, math.ceil(x_hi) + 1)
    y0, y1 = max(0, math.floor(y_lo)), min(height, math.ceil(y_hi) + 1)
    if x1 <= x0 or y1 <= y0:
        return None
    for lat in lattice if x0 or y0 else ():  # step (2) on the translated axes
        xs, ys = lat[0::2], lat[1::2]
        for xa, ya, xb, yb in zip(xs, ys, xs[1:] + xs[:1], ys[1:] + ys[:1]):
            dx, dy = abs(xb - xa), abs(yb - ya)
            if dx >= dy:  # walked along x from its left end, y rounded
                if (
                    y0
                    and dx
                    and not (
                        _rounds_alike(ya, yb, dx, 5 * y0)
                        if xa <= xb
                        else _rounds_alike(yb, ya, dx, 5 * y0)
                    )
                ):
                    y0 = 0
            elif x0 and not (
                _rounds_alike(xa, xb, dy, 5 * x0) if ya <= yb else _rounds_alike(xb, xa, dy, 5 * x0)
            ):
                x0 = 0
    for part, lat in zip(parts, lattice):
        if x0:
            part[0::2] = [(c - 5 * x0) / 5.0 for c in lat[0::2]]
        if y0:
            part[1::2] = [(c - 5 * y0) / 5.0 for c in lat[1::2]]
    return parts, y0, x0, y1 - y0, x1 - x0


def render_mask(instances: list[tuple[object, int]], height: int, width: int) -> np.ndarray:
    """(H, W) uint8 semantic mask from ``(segmentation, value)`` pairs (value k + 1 for class k,
    255 for a crowd region), painted by the policy of the module docstring: decreasing area,
    ties in the given order, crowds last.

    A polygon instance is rasterised and painted within its bounding box only, pixel for pixel
    as in the full frame (:func:`_polygon_box`); RLE instances, rare, are decoded full frame."""
    mask_api = _mask_api()
    out = np.zeros((height, width), dtype=np.uint8)
    if not instances:
        return out
    pieces = []  # (RLE, y0, x0)
    for seg, _ in instances:
        box = _polygon_box(seg, height, width)
        if box is None:
            pieces.append((_to_rle(mask_api, seg, height, width), 0, 0))
            continue
        parts, y0, x0, box_h, box_w = box
        rles = mask_api.frPyObjects(parts, box_h, box_w)
        pieces.append((rles[0] if len(rles) == 1 else mask_api.merge(rles), y0, x0))
    areas = mask_api.area([rle for rle, _, _ in pieces])
    order = sorted(
        range(len(pieces)), key=lambda i: (instances[i][1] == IGNORE_INDEX, -int(areas[i]))
    )
    for i in order:
        rle, y0, x0 = pieces[i]
        bits = mask_api.decode(rle)  # (h, w) 0/1 of the box, column-major
        np.copyto(
            out[y0 : y0 + bits.shape[0], x0 : x0 + bits.shape[1]],
            instances[i][1],
            where=bits.view(bool),
        )
    return out


def _render_chunk(jobs: list[tuple[str, int, int, list]]) -> int:
    """Render and save ``(png path, height, width, instances)`` jobs; a bad annotation is a
    ValueError naming the image (exceptions cross the process boundary as plain ones)."""
    for path, height, width, instances in jobs:
        try:
            mask = render_mask(instances, height, width)
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise ValueError(
                f"cannot render the annotations of {Path(path).stem} ({type(e).__name__}: {e})"
            ) from None
        img = Image.fromarray(mask)
        img.putpalette(_PALETTE)
        img.save(path, compress_level=1)
    return len(jobs)


def _render_all(jobs: list, num_workers: int, ann_file: Path, split: str) -> None:
    chunks = [jobs[i : i + _CHUNK] for i in range(0, len(jobs), _CHUNK)]
    with progress(desc=f"rendering COCO {split} masks", total=len(jobs)) as bar:
        try:
            if num_workers <= 1 or len(chunks) <= 1:
                for chunk in chunks:
                    bar.update(_render_chunk(chunk))
                return
            # forked workers would copy the parsed JSON page by page as their gc walks it
            gc.freeze()
            try:
                with ProcessPoolExecutor(min(num_workers, len(chunks))) as pool:
                    for done in pool.map(_render_chunk, chunks):
                        bar.update(done)
            finally:
                gc.unfreeze()
        except ValueError as e:
            raise DataError(str(ann_file), str(e)) from None


def _read_instances(ann_file: Path) -> dict:
    try:
        with open(ann_file, "rb") as f:
            data = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(str(ann_file), f"cannot read the annotations ({e})") from None
    missing = [k for k in ("images", "annotations", "categories") if k not in data]
    if missing:
        raise DataError(str(ann_file), f"not a COCO instances file: no {missing}")
    return data


def _keep_or_raise(rows: list, skip: bool, what: str) -> list:
    """``rows`` without the bad ones (DataError instances), or a DataError naming the first
    bad file."""
    bad = [r for r in rows if isinstance(r, DataError)]
    if bad and not skip:
        more = f" (and {len(bad) - 1} more bad samples)" if len(bad) > 1 else ""
        raise DataError(
            bad[0].path, f"{bad[0].problem}{more}; pass skip_bad_samples=True to skip them"
        )
    for e in bad:
        logger.warning("skipped bad sample %s", e)
    if bad:
        logger.warning("%s: skipped %d bad samples", what, len(bad))
    return [r for r in rows if not isinstance(r, DataError)]


def _dataset(
    rows: list[dict], names, split: str, description: str, skipped: int
) -> datasets.Dataset:
    feats = features(names)
    ds = datasets.Dataset.from_dict(
        {k: [r[k] for r in rows] for k in feats}, features=feats, split=split
    )
    return describe(ds, description, skipped)


def _build_from_instances(
    split_dir: Path,
    ann_file: Path,
    split: str,
    mask_dir: Path | None,
    skip_bad_samples: bool,
    num_workers: int,
) -> datasets.Dataset:
    if mask_dir is not None:
        _mask_api()  # fail before parsing the JSON when pycocotools is missing
    data = _read_instances(ann_file)
    categories = sorted(data["categories"], key=lambda c: c["id"])
    value = {c["id"]: k + 1 for k, c in enumerate(categories)}
    by_image = defaultdict(list)
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append(ann)
    images = {img["id"]: img for img in data["images"]}
    unknown = set(by_image) - set(images)
    if unknown:
        raise DataError(
            str(ann_file),
            f"annotations of {len(unknown)} image ids not in 'images', e.g. {sorted(unknown)[:3]}",
        )
    present = set(os.listdir(split_dir))
    kept = sorted((images[i] for i in by_image), key=lambda img: img["file_name"])
    rows, jobs = [], []
    for img in kept:
        name, height, width = img["file_name"], img["height"], img["width"]
        if name not in present:
            rows.append(
                DataError(
                    str(split_dir / name), f"listed in {ann_file.name} but the image is missing"
                )
            )
            continue
        stem = Path(name).stem
        anns = by_image[img["id"]]
        try:
            values = [value[a["category_id"]] for a in anns]
        except KeyError as e:
            raise DataError(
                str(ann_file), f"image {name}: category id {e} not in 'categories'"
            ) from None
        row = {
            "id": stem,
            "image": {"path": str(split_dir / name), "bytes": None},
            "labels": sorted({v - 1 for v in values}),
            "mask": None,
        }
        if mask_dir is not None:
            instances = []
            for a, v in zip(anns, values):
                seg = a["segmentation"]
                if isinstance(seg, dict) and list(seg.get("size", ())) != [height, width]:
                    raise DataError(
                        str(ann_file),
                        f"annotation {a.get('id')}: RLE size "
                        f"{seg.get('size')} is not the image's "
                        f"{[height, width]}",
                    )
                instances.append((seg, IGNORE_INDEX if a.get("iscrowd") else v))
            row["mask"] = {"path": str(mask_dir / f"{stem}.png"), "bytes": None}
            jobs.append((row["mask"]["path"], height, width, instances))
        rows.append(row)
    what = f"load_coco({split_dir.parent}, {split!r})"
    listed = len(rows)
    rows = _keep_or_raise(rows, skip_bad_samples, what)
    left_out = len(images) - len(kept)
    logger.info("%s: %d images, %d without annotations left out", what, len(rows), left_out)
    if jobs:
        mask_dir.mkdir(parents=True, exist_ok=True)
        _render_all(jobs, num_workers, ann_file, split)
    return _dataset(
        rows,
        [c["name"] for c in categories],
        split,
        f"MS COCO {split} from {ann_file}; without annotations: {left_out}",
        listed - len(rows),
    )


def _build_from_pngs(
    split_dir: Path,
    png_dir: Path,
    split: str,
    masks: bool,
    skip_bad_samples: bool,
    num_workers: int,
) -> datasets.Dataset:
    images = {Path(n).stem: n for n in os.listdir(split_dir)}
    stems = sorted(
        Path(n).stem for n in os.listdir(png_dir) if n.endswith(".png") and Path(n).stem in images
    )
    num_classes = len(COCO_CLASS_NAMES)

    def labels_of(stem: str):
        try:
            return stem, label_ids_from_mask(
                decode_mask(str(png_dir / f"{stem}.png"), num_classes), num_classes
            )
        except DataError as e:
            return e

    with ThreadPoolExecutor(num_workers) as pool:
        results = list(
            progress(
                pool.map(labels_of, stems), desc=f"indexing COCO {split} masks", total=len(stems)
            )
        )
    what = f"load_coco({split_dir.parent}, {split!r})"
    good = _keep_or_raise(results, skip_bad_samples, what)
    rows = [
        {
            "id": s,
            "image": {"path": str(split_dir / images[s]), "bytes": None},
            "labels": lab,
            "mask": {"path": str(png_dir / f"{s}.png"), "bytes": None} if masks else None,
        }
        for s, lab in good
        if lab
    ]
    logger.info(
        "%s: %d images, %d without a mask and %d without foreground left out",
        what,
        len(rows),
        len(images) - len(stems),
        len(good) - len(rows),
    )
    return _dataset(
        rows, COCO_CLASS_NAMES, split, f"MS COCO {split} from {png_dir}", len(results) - len(good)
    )


def _fingerprint(*parts) -> str:
    h = hashlib.sha1()
    for part in (_CACHE_VERSION, *parts):
        h.update(str(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def _stamp(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{st.st_mtime_ns}"


def load_coco(
    root: str | os.PathLike,
    split: str = "train2014",
    *,
    cache_dir: str | os.PathLike | None = None,
    skip_bad_samples: bool = False,
    num_workers: int | None = None,
    masks: bool = True,
) -> datasets.Dataset:
    """MS COCO 2014 ``split`` as a ``datasets.Dataset`` in the schema (module docstring).

    root: holds ``train2014/``, ``val2014/`` (``COCO_<split>_<12-digit id>.jpg``) and
        ``annotations/instances_<split>.json``, or ``SegmentationClass/<split>/`` PNG masks.
    split: ``train2014`` or ``val2014``.
    cache_dir: where the Arrow index and the rendered masks are cached (default: the datasets
        cache, ``agen_hf/``). A second load only stats the annotations file and the
        folders, and with PNG masks each mask (an edited mask rebuilds the index).
    skip_bad_samples: skip (and log, with a count) images missing from ``<split>/`` and PNG
        masks that fail the checks, instead of raising :class:`DataError` naming the file.
    num_workers: processes rendering masks from the annotations, or threads decoding the PNG
        masks (default: ``os.cpu_count()``).
    masks: False indexes image-level labels only (``mask`` None, nothing rendered, no
        pycocotools needed), for training.
    """
    if split not in SPLITS:
        raise ValueError(f"COCO split {split!r}: expected one of {', '.join(SPLITS)}")
    root = Path(root)
    split_dir, png_dir = root / split, root / "SegmentationClass" / split
    ann_file = root / "annotations" / f"instances_{split}.json"
    for path in (root, split_dir):
        if not path.is_dir():
            raise FileNotFoundError(DOWNLOAD_HELP.format(missing=path))
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    workers = num_workers or os.cpu_count() or 1
    common = (root.resolve(), split, skip_bad_samples, masks, _stamp(split_dir))
    if png_dir.is_dir():  # labels come from the masks: each one's size and time in the key
        masks_key = files_key(png_dir, sorted(os.listdir(png_dir)))
        name = f"coco-{split}-{_fingerprint('png', *common, _stamp(png_dir), masks_key)}"
        return cached_arrow(
            cache,
            name,
            lambda: _build_from_pngs(split_dir, png_dir, split, masks, skip_bad_samples, workers),
        )
    if not ann_file.is_file():
        raise FileNotFoundError(DOWNLOAD_HELP.format(missing=ann_file))
    name = f"coco-{split}-{_fingerprint('instances', *common, _stamp(ann_file))}"
    mask_dir = cache / name / "SegmentationClass" / split if masks else None
    if mask_dir is not None and not mask_dir.is_dir():  # rendered masks deleted
        (cache / f"{name}.arrow").unlink(missing_ok=True)
    return cached_arrow(
        cache,
        name,
        lambda: _build_from_instances(
            split_dir, ann_file, split, mask_dir, skip_bad_samples, workers
        ),
    )

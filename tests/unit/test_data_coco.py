"""Load_coco on a tiny COCO-format root written here: masks checked pixel by pixel against a
slow reference on ``pycocotools.coco.COCO.annToMask``, the cache, the PNG-mask source without
pycocotools, and the errors."""

import json
import logging
import math
import os
import shutil
import sys

import numpy as np
import pytest
from PIL import Image

mask_utils = pytest.importorskip("pycocotools.mask")  # the coco extra (in dev)

from coco_fixtures import (  # noqa: E402
    CATEGORIES,
    NAMES,
    OFFICIAL_IDS,
    H,
    W,
    box,
    rle,
    stem,
    uncompressed_rle,
    val_annotations,
    write_split,
)

from agen_hf.data import coco as coco_module
from agen_hf.data import load_coco, voc_palette
from agen_hf.data.coco import COCO_CLASS_NAMES
from agen_hf.data.decoding import DataError
from agen_hf.data.schema import features


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "coco"
    write_split(root, "val2014", val_annotations(), CATEGORIES)
    official = [{"id": i, "name": n} for i, n in zip(OFFICIAL_IDS, COCO_CLASS_NAMES)]
    write_split(
        root, "train2014", {7: [(90, box(1, 1, 9, 9), 0), (1, box(20, 20, 30, 30), 0)]}, official
    )
    return root


def reference_masks(ann_file):
    """The documented policy, written the slow, obvious way on COCO.annToMask."""
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    value = {c: k + 1 for k, c in enumerate(sorted(coco.getCatIds()))}
    out = {}
    for img in coco.loadImgs(coco.getImgIds()):
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        if not anns:
            continue
        sem = np.zeros((img["height"], img["width"]), dtype=np.uint8)
        things = sorted(
            [a for a in anns if not a["iscrowd"]], key=lambda a: -int(coco.annToMask(a).sum())
        )  # stable: ties in order
        for a in things:
            sem[coco.annToMask(a) == 1] = value[a["category_id"]]
        for a in anns:
            if a["iscrowd"]:
                sem[coco.annToMask(a) == 1] = 255
        out[img["file_name"][:-4]] = sem
    return out


def masks_of(ds):
    return {row["id"]: np.array(row["mask"]) for row in ds}


def hide_pycocotools(monkeypatch):
    for name in ("pycocotools", "pycocotools.mask", "pycocotools.coco"):
        monkeypatch.setitem(sys.modules, name, None)


def test_masks_labels_and_schema_match_the_reference(root, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="agen_hf.data.coco"):
        ds = load_coco(root, "val2014", cache_dir=tmp_path / "cache", num_workers=1)
    assert "5 images, 1 without annotations left out" in caplog.text
    assert ds.features == features(NAMES)
    assert tuple(ds.features["labels"].feature.names) == NAMES
    assert ds["id"] == [stem("val2014", i) for i in range(1, 6)]
    assert ds["labels"] == [[0, 1, 3], [2, 3], [0, 1], [1], [0, 2]]
    ref = reference_masks(root / "annotations" / "instances_val2014.json")
    got = masks_of(ds)
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
    one, three, five = (got[stem("val2014", i)] for i in (1, 3, 5))
    assert one[10, 12] == 2 and one[3, 5] == 1 and one[25, 37] == 4  # car on person; 2nd part
    assert three[5, 5] == 2 and three[15, 15] == 255 and three[25, 30] == 255
    assert five[7, 7] == 3  # equal areas: the later one (dog) on top
    assert set(np.unique(got[stem("val2014", 4)])) == {0, 255}
    sample = ds[0]
    assert sample["mask"].mode == "P" and sample["image"].size == sample["mask"].size == (W, H)


def test_official_ids_map_to_the_80_names(root, tmp_path):
    ds = load_coco(root, cache_dir=tmp_path / "cache")  # train2014 by default
    assert tuple(ds.features["labels"].feature.names) == COCO_CLASS_NAMES
    assert ds["labels"] == [[0, 79]]
    mask = np.array(ds[0]["mask"])
    assert mask[5, 5] == 80 and mask[25, 25] == 1  # toothbrush (id 90) -> 80, person -> 1


def test_parallel_rendering_equals_serial(root, tmp_path, monkeypatch):
    serial = masks_of(load_coco(root, "val2014", cache_dir=tmp_path / "a", num_workers=1))
    monkeypatch.setattr(coco_module, "_CHUNK", 2)  # 3 chunks over 2 processes
    parallel = masks_of(load_coco(root, "val2014", cache_dir=tmp_path / "b", num_workers=2))
    assert serial.keys() == parallel.keys()
    for key in serial:
        np.testing.assert_array_equal(parallel[key], serial[key])


def random_polygon(rng, height, width):
    """One polygon instance, as COCO's and worse: 1-3 parts of 3-40 vertices around a centre
    in or near the frame (in angular order, or not: self-intersecting), radii from a hundredth
    of a pixel to the frame's size, coordinates to 2 decimals (as in COCO), 1 (rounding ties
    of pycocotools' 1/5-pixel lattice), 0 or all; some clipped to the frame's far edge or one
    pixel short of it, some beyond the frame, some degenerate (collinear or repeated
    vertices)."""
    parts = []
    for _ in range(1 if rng.random() < 0.8 else int(rng.integers(2, 4))):
        n = int(rng.integers(3, 41))
        cx, cy = rng.uniform(-0.2, 1.2) * width, rng.uniform(-0.2, 1.2) * height
        radius = rng.choice([0.01, 0.3, 2.0, 10.0, max(height, width)]) * rng.uniform(0.2, 1, n)
        angle = rng.uniform(0, 2 * np.pi, n)
        kind = rng.random()
        if kind < 0.8:
            angle.sort()
        xs, ys = cx + radius * np.cos(angle), cy + radius * np.sin(angle)
        if kind > 0.9:  # on a line through the centre, vertices repeated or not
            xs, ys = cx + (xs - cx) * rng.integers(0, 2), cy + (ys - cy) * rng.integers(0, 2)
            xs, ys = np.where(rng.random(n) < 0.5, cx, xs), np.where(rng.random(n) < 0.5, cy, ys)
        clip = rng.random()
        if clip < 0.6:
            edge = rng.integers(0, 2)
            xs, ys = np.clip(xs, 0, width - edge), np.clip(ys, 0, height - edge)
        decimals = int(rng.choice([0, 1, 2, 2, 17]))
        parts.append(np.round(np.stack([xs, ys], 1).ravel(), decimals).tolist())
    return parts


def full_frame(segmentation, height, width):
    """A polygon instance's mask as COCO.annToMask makes it."""
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width)))


def test_cropped_polygons_equal_the_full_frame_reference(tmp_path):
    """Polygons are rasterised within their bounding boxes (coco._polygon_box): pixel for pixel
    what the full frame gives, alone and painted together (the order needs the same areas)."""
    rng = np.random.default_rng(0)
    sizes = [(32, 40), (5, 7), (1, 1), (480, 640), (427, 640), (640, 480)]
    images, anns = [], []
    for i in range(1, 241):
        height, width = sizes[i % len(sizes)]
        images.append(
            {"id": i, "file_name": f"{stem('val2014', i)}.jpg", "width": width, "height": height}
        )
        for _ in range(1 + rng.poisson(5)):
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "iscrowd": 0,
                    "category_id": CATEGORIES[int(rng.integers(0, 4))]["id"],
                    "segmentation": random_polygon(rng, height, width),
                }
            )
        if (height, width) == (H, W) and rng.random() < 0.5:  # RLE among the polygons
            crowd = int(rng.random() < 0.5)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": i,
                    "iscrowd": crowd,
                    "category_id": CATEGORIES[0]["id"],
                    "segmentation": (uncompressed_rle if crowd else rle)(5, 6, 30, 20),
                }
            )
    ann_file = tmp_path / "instances.json"
    ann_file.write_text(
        json.dumps({"images": images, "annotations": anns, "categories": CATEGORIES})
    )
    from pycocotools.coco import COCO

    coco = COCO(str(ann_file))
    for ann in anns:
        img = coco.imgs[ann["image_id"]]
        got = coco_module.render_mask([(ann["segmentation"], 1)], img["height"], img["width"])
        np.testing.assert_array_equal(got, coco.annToMask(ann), err_msg=str(ann))
    value = {c: k + 1 for k, c in enumerate(sorted(coco.getCatIds()))}
    ref = reference_masks(ann_file)
    for img in images:
        instances = [
            (a["segmentation"], 255 if a["iscrowd"] else value[a["category_id"]])
            for a in coco.imgToAnns[img["id"]]
        ]
        got = coco_module.render_mask(instances, img["height"], img["width"])
        np.testing.assert_array_equal(got, ref[img["file_name"][:-4]], err_msg=str(img))
    crops = [
        coco_module._polygon_box(
            a["segmentation"], coco.imgs[a["image_id"]]["height"], coco.imgs[a["image_id"]]["width"]
        )
        for a in anns
    ]
    assert sum(c is not None and c[1] > 0 and c[2] > 0 for c in crops) > len(anns) / 4


def translated(segmentation, height, width, on_lattice):
    """The naive crop: the polygon translated by its box's offset (on pycocotools' lattice
    or not), rasterised in the box and pasted into the frame."""
    xs = [c for part in segmentation for c in part[0::2]]
    ys = [c for part in segmentation for c in part[1::2]]
    x0, x1 = max(0, math.floor(min(xs))), min(width, math.ceil(max(xs)) + 1)
    y0, y1 = max(0, math.floor(min(ys))), min(height, math.ceil(max(ys)) + 1)
    offset = (x0, y0)
    moved = [
        [
            (int(5 * c + 0.5) - 5 * offset[k % 2]) / 5
            if on_lattice and offset[k % 2]
            else c - offset[k % 2]
            for k, c in enumerate(part)
        ]
        for part in segmentation
    ]
    out = np.zeros((height, width), dtype=np.uint8)
    out[y0:y1, x0:x1] = full_frame(moved, y1 - y0, x1 - x0)
    return out


@pytest.mark.parametrize(
    "segmentation, height, width, on_lattice",
    [
        # pycocotools' rounding of vertices to its lattice, (int)(5 x + .5), differs after x - x0
        ([[16.7, 18.9, 17.7, 6.2, 26.3, 23.6]], 32, 40, False),
        ([[25.0, 9.9, 27.9, 29.2, 34.1, 1.3]], 32, 40, False),
        # its rounding of points interpolated along an edge differs at another magnitude, even
        # with the vertices on the lattice (y, x, y, y: that axis is left untranslated)
        ([[395.4, 331.4, 439.4, 356.8, 391.4, 327.6]], 480, 640, True),
        ([[86.4, 239.4, 44.4, 282.4, 52.8, 267.2]], 480, 640, True),
        ([[268.0, 316.6, 248.4, 329.2, 291.8, 365.8]], 480, 640, True),
        ([[218.4, 74.2, 250.8, 56.8, 199.6, 60.6]], 480, 640, True),
    ],
)
def test_crops_where_translation_changes_the_rounding(segmentation, height, width, on_lattice):
    """The two roundings of coco._polygon_box's docstring: naive crops get pixels wrong."""
    reference = full_frame(segmentation, height, width)
    assert not np.array_equal(translated(segmentation, height, width, on_lattice), reference)
    got = coco_module.render_mask([(segmentation, 1)], height, width)
    np.testing.assert_array_equal(got, reference)


def test_polygon_box():
    parts, *placed = coco_module._polygon_box(box(10, 8, 20, 16), H, W)
    assert placed == [8, 10, 9, 11] and parts == [[0, 0, 10, 0, 10, 8, 0, 8]]
    parts, *placed = coco_module._polygon_box([[-3, 20.5, 45, 20.5, 45, 40]], H, W)  # clipped
    assert placed == [20, 0, H - 20, W] and parts == [[-3, 0.6, 45, 0.6, 45, 20]]  # on 1/5 px
    for unusual in (
        [],
        [[1, 2, 3, 4]],
        [[1, 2, 3, 4, 5, 6], [1, 2, 3, 4]],
        [[1, 2, 3, 4, 5]],
        [[1, 2, 3, float("nan"), 5, 6]],
        [[50, 40, 60, 40, 60, 50]],
        rle(1, 1, 3, 3),
    ):
        assert coco_module._polygon_box(unusual, H, W) is None, unusual


def test_second_load_is_a_memory_map_of_the_cache(root, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    first = load_coco(root, "val2014", cache_dir=cache, num_workers=1)
    arrows = list(cache.glob("coco-val2014-*.arrow"))
    assert len(arrows) == 1
    mask_dir = cache / arrows[0].stem / "SegmentationClass" / "val2014"
    assert sorted(p.stem for p in mask_dir.iterdir()) == first["id"]
    row = first.data.table.column("mask")[0].as_py()
    assert row == {"path": str(mask_dir / f"{first['id'][0]}.png"), "bytes": None}

    def boom(*_):
        raise AssertionError("rebuilt")

    monkeypatch.setattr(coco_module, "_render_chunk", boom)
    monkeypatch.setattr(coco_module, "_read_instances", boom)
    second = load_coco(root, "val2014", cache_dir=cache, num_workers=1)
    assert second.cache_files[0]["filename"] == str(arrows[0])
    assert second["labels"] == first["labels"] and second.features == first.features
    shutil.rmtree(mask_dir)  # the rendered masks deleted: rebuilt, not an index of nothing
    with pytest.raises(AssertionError, match="rebuilt"):
        load_coco(root, "val2014", cache_dir=cache, num_workers=1)


def test_labels_only_needs_no_pycocotools(root, tmp_path, monkeypatch):
    hide_pycocotools(monkeypatch)
    ds = load_coco(root, "val2014", cache_dir=tmp_path / "cache", masks=False)
    assert ds["labels"] == [[0, 1, 3], [2, 3], [0, 1], [1], [0, 2]]
    assert ds[0]["mask"] is None
    with pytest.raises(ImportError, match=r"pip install agen_hf\[coco\]"):
        load_coco(root, "val2014", cache_dir=tmp_path / "cache")


def write_png(path, mask):
    img = Image.fromarray(mask.astype(np.uint8))
    img.putpalette(voc_palette())
    img.save(path)


def test_pre_converted_png_masks(root, tmp_path, monkeypatch, caplog):
    hide_pycocotools(monkeypatch)
    (root / "annotations" / "instances_val2014.json").unlink()  # not read either
    png_dir = root / "SegmentationClass" / "val2014"
    png_dir.mkdir(parents=True)
    masks = {}
    for i, values in {1: (1, 80), 2: (), 3: (17,)}.items():  # 2: background only; 4-6: none
        m = np.zeros((H, W), dtype=np.uint8)
        for k, v in enumerate(values):
            m[2 + 10 * k : 8 + 10 * k, 3:30] = v
        m[0, :] = 255
        write_png(png_dir / f"{stem('val2014', i)}.png", m)
        masks[stem("val2014", i)] = m
    write_png(png_dir / "COCO_val2014_000000000099.png", np.ones((H, W)))  # no image: ignored
    with caplog.at_level(logging.INFO, logger="agen_hf.data.coco"):
        ds = load_coco(root, "val2014", cache_dir=tmp_path / "cache")
    assert "2 images, 3 without a mask and 1 without foreground left out" in caplog.text
    assert ds.features == features(COCO_CLASS_NAMES)
    assert ds["id"] == [stem("val2014", 1), stem("val2014", 3)]
    assert ds["labels"] == [[0, 79], [16]]
    for key, got in masks_of(ds).items():
        np.testing.assert_array_equal(got, masks[key])
    assert ds[0]["image"].size == (W, H)
    again = load_coco(root, "val2014", cache_dir=tmp_path / "cache")
    assert str(tmp_path / "cache") in again.cache_files[0]["filename"]

    bad = png_dir / f"{stem('val2014', 3)}.png"
    write_png(bad, np.full((H, W), 81))
    with pytest.raises(DataError, match=f"{bad}: mask values \\[81\\]"):
        load_coco(root, "val2014", cache_dir=tmp_path / "c2")
    with caplog.at_level(logging.WARNING):
        ds = load_coco(root, "val2014", cache_dir=tmp_path / "c3", skip_bad_samples=True)
    assert ds["id"] == [stem("val2014", 1)] and "skipped 1 bad samples" in caplog.text


def test_a_png_mask_rewritten_in_place_rebuilds_the_index(root, tmp_path, monkeypatch):
    hide_pycocotools(monkeypatch)
    png_dir = root / "SegmentationClass" / "val2014"
    png_dir.mkdir(parents=True)
    for i in (1, 3):
        write_png(png_dir / f"{stem('val2014', i)}.png", np.full((H, W), i))
    assert load_coco(root, "val2014", cache_dir=tmp_path / "cache")["labels"] == [[0], [2]]
    path = png_dir / f"{stem('val2014', 3)}.png"
    folder_time, file_time = png_dir.stat().st_mtime_ns, path.stat().st_mtime_ns
    write_png(path, np.full((H, W), 7))  # the same size: only the time tells
    os.utime(path, ns=(file_time + 10**9, file_time + 10**9))
    os.utime(png_dir, ns=(folder_time, folder_time))  # an in-place write leaves the folder's
    assert load_coco(root, "val2014", cache_dir=tmp_path / "cache")["labels"] == [[0], [6]]


def test_missing_files_are_named(root, tmp_path):
    cache = tmp_path / "cache"
    with pytest.raises(FileNotFoundError, match="(?s)nowhere.*cocodataset.org"):
        load_coco(tmp_path / "nowhere", "val2014", cache_dir=cache)
    shutil.rmtree(root / "train2014")
    with pytest.raises(FileNotFoundError, match="train2014 was not found"):
        load_coco(root, "train2014", cache_dir=cache)
    ann = root / "annotations" / "instances_val2014.json"
    ann.rename(tmp_path / "moved.json")
    with pytest.raises(FileNotFoundError, match=f"(?s){ann} was not found.*2014 Train/Val annot"):
        load_coco(root, "val2014", cache_dir=cache)
    with pytest.raises(ValueError, match="'val2017'.*train2014, val2014"):
        load_coco(root, "val2017", cache_dir=cache)


def test_missing_image_is_named_or_skipped(root, tmp_path, caplog):
    missing = root / "val2014" / f"{stem('val2014', 2)}.jpg"
    missing.unlink()
    with pytest.raises(DataError, match=f"{missing}: listed in instances_val2014.json but"):
        load_coco(root, "val2014", cache_dir=tmp_path / "a", num_workers=1)
    with caplog.at_level(logging.WARNING):
        ds = load_coco(
            root, "val2014", cache_dir=tmp_path / "b", num_workers=1, skip_bad_samples=True
        )
    assert stem("val2014", 2) not in ds["id"] and len(ds) == 4
    assert "skipped 1 bad samples" in caplog.text

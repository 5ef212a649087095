import json
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from voc_fixtures import BAD_CASES, good_pair, make_voc, write_mask

from agen_hf.configuration_agen import VOC_CLASSES
from agen_hf.data import FEATURES, VocDataError, load_voc
from agen_hf.data.transforms import collate, eval_transform, with_transforms
from agen_hf.data.validate import main as validate_main
from agen_hf.data.voc import packaged_train_aug_ids

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"


def hot(*classes):
    """The labels of an image with these mask values: class indices (value - 1), sorted."""
    return sorted(c - 1 for c in classes)


def test_splits_schema_and_labels_from_masks(tmp_path):
    root = make_voc(tmp_path / "VOC2012")
    train = load_voc(tmp_path, "train", cache_dir=tmp_path / "cache")  # parent folder works too
    assert train.features == FEATURES
    assert train["id"] == ["a", "b"]
    assert train["labels"] == [hot(1), hot(2, 15)]
    assert train[0]["mask"].mode == "P" and train[0]["image"].size == (48, 40)
    val = load_voc(root, "val", cache_dir=tmp_path / "cache")
    assert val["id"] == ["c", "d"] and val["labels"] == [hot(3), hot(20)]
    aug = load_voc(root, "train_aug", cache_dir=tmp_path / "cache")
    assert aug["id"] == ["a", "b", "e"] and aug["labels"][2] == hot(7)
    assert aug[2]["mask"] is not None  # e's mask comes from SegmentationClassAug


def test_index_references_files_and_is_cached(tmp_path):
    root = make_voc(tmp_path / "voc")
    cache = tmp_path / "cache"
    first = load_voc(root, "train", cache_dir=cache)
    table = first.data.table
    assert table.column("image")[0].as_py()["bytes"] is None  # referenced, not decoded/copied
    assert table.column("image")[0].as_py()["path"].endswith("JPEGImages/a.jpg")
    entries = sorted(p.name for p in cache.iterdir())  # the index and its description
    assert len(entries) == 2 and entries[0].startswith("voc-train-")
    assert entries[0].endswith(".arrow") and entries[1] == entries[0][:-5] + "txt"
    second = load_voc(root, "train", cache_dir=cache)
    assert second.cache_files and str(cache) in second.cache_files[0]["filename"]
    assert second["labels"] == first["labels"]


def rewrite_in_place(path: Path, write) -> None:
    """``write(path)`` over the file itself, as an editor or a script fixing a mask does: the
    folder keeps its time, the file gets a time of its own (clock ticks are coarse)."""
    folder_time = path.parent.stat().st_mtime_ns
    file_time = path.stat().st_mtime_ns
    write(path)
    os.utime(path, ns=(file_time + 10**9, file_time + 10**9))
    os.utime(path.parent, ns=(folder_time, folder_time))


def test_a_mask_or_image_rewritten_in_place_rebuilds_the_index(tmp_path):
    root, cache = make_voc(tmp_path / "voc"), tmp_path / "cache"
    assert load_voc(root, "train", cache_dir=cache)["labels"] == [hot(1), hot(2, 15)]
    _, cow = good_pair(0, classes=(10,))  # a's mask now shows a cow, not an aeroplane
    rewrite_in_place(root / "SegmentationClass" / "a.png", lambda p: write_mask(p, cow))
    assert load_voc(root, "train", cache_dir=cache)["labels"] == [hot(10), hot(2, 15)]
    image, _ = good_pair(0)
    rewrite_in_place(
        root / "JPEGImages" / "b.jpg",
        lambda p: Image.fromarray(image[..., 0]).save(p, format="JPEG"),
    )
    with pytest.raises(VocDataError, match="b.jpg: grayscale image"):
        load_voc(root, "train", cache_dir=cache)
    # nothing changed since: the index of the last good state is a memory map again
    rewrite_in_place(
        root / "JPEGImages" / "b.jpg", lambda p: Image.fromarray(image).save(p, "JPEG")
    )
    load_voc(root, "train", cache_dir=cache)
    arrows = sorted(cache.glob("*.arrow"))
    again = load_voc(root, "train", cache_dir=cache)
    assert (
        sorted(cache.glob("*.arrow")) == arrows and str(cache) in again.cache_files[0]["filename"]
    )


def test_labels_file_for_ids_without_masks(tmp_path):
    root = make_voc(tmp_path / "voc")
    (root / "SegmentationClassAug" / "e.png").unlink()
    with pytest.raises(VocDataError, match="no mask and no image-level label"):
        load_voc(root, "train_aug", cache_dir=tmp_path / "c1")
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"e": ["bus", "person"]}))
    aug = load_voc(root, "train_aug", labels_file=labels, cache_dir=tmp_path / "c2")
    assert aug["labels"][2] == hot(6, 15) and aug[2]["mask"] is None
    labels.write_text(json.dumps({"e": [5, 14]}))  # class indices 0..19 work too
    assert load_voc(root, "train_aug", labels_file=labels, cache_dir=tmp_path / "c3")["labels"][
        2
    ] == hot(6, 15)


def test_packaged_train_aug_list():
    ids = packaged_train_aug_ids()
    assert len(ids) == 10582 and len(set(ids)) == 10582
    assert ids[0] == "2007_000032"


@pytest.mark.parametrize("bad", sorted(BAD_CASES))
def test_bad_samples_are_named_or_skipped(tmp_path, bad, caplog):
    words, at_build = BAD_CASES[bad]
    root = make_voc(tmp_path / "voc", bad=bad)
    bad_file = "b.png" if bad in ("size", "values", "no_foreground") else "b.jpg"
    if at_build:
        with pytest.raises(VocDataError) as err:
            load_voc(root, "train", cache_dir=tmp_path / "cache")
        assert bad_file in err.value.path and words in str(err.value)
        assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())
        with caplog.at_level(logging.WARNING):
            ds = load_voc(root, "train", skip_bad_samples=True, cache_dir=tmp_path / "cache")
        assert ds["id"] == ["a"]
        assert "skipped 1 of 2 samples" in caplog.text and words in caplog.text
    else:
        ds = load_voc(root, "train", cache_dir=tmp_path / "cache")  # headers are fine
        loader = with_transforms(ds, eval_transform())
        with pytest.raises(VocDataError, match=words) as err:
            loader[1]
        assert bad_file in err.value.path
        skipping = with_transforms(ds, eval_transform(), skip_bad_samples=True)
        with caplog.at_level(logging.WARNING):
            batch = collate([skipping[0], skipping[1]])
        assert batch["ids"] == ["a"] and "skipped bad sample b" in caplog.text


@pytest.mark.parametrize("bad", sorted(BAD_CASES))
def test_validate_reports_every_problem(tmp_path, bad, capsys):
    root = make_voc(tmp_path / "voc", bad=bad)
    assert validate_main([str(root)]) == 1
    out = capsys.readouterr().out
    words = BAD_CASES[bad][0]
    assert "[train] " in out and words in out
    assert "checked 7 samples" in out and "problems" in out


def test_validate_clean_root(tmp_path, capsys):
    assert validate_main([str(make_voc(tmp_path / "voc"))]) == 0
    assert "no problems" in capsys.readouterr().out
    assert validate_main([str(tmp_path / "nowhere")]) == 2


def test_missing_root_says_what_to_download(tmp_path):
    with pytest.raises(FileNotFoundError, match="VOCtrainval_11-May-2012.tar") as err:
        load_voc(tmp_path / "no-voc-here", "train")
    assert "SegmentationClassAug" in str(err.value)


def test_offline_hub_id_says_what_to_download(monkeypatch):
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="VOCtrainval_11-May-2012.tar"):
        load_voc("someone/voc2012-not-cached", "train")


def test_any_dataset_with_a_column_mapping():
    rng = np.random.default_rng(0)
    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[5:10, 5:10] = 12
    foreign = datasets.Dataset.from_dict(
        {
            "photo": [Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8))],
            "seg": [Image.fromarray(mask)],
            "extra": [1],
        },
        features=datasets.Features(
            {"photo": datasets.Image(), "seg": datasets.Image(), "extra": datasets.Value("int32")}
        ),
    )
    ds = load_voc(foreign, column_mapping={"photo": "image", "seg": "mask"})
    assert ds.features == FEATURES and ds["labels"] == [hot(12)] and ds["id"] == ["0"]
    with pytest.raises(ValueError, match="no 'image' column"):
        load_voc(foreign)
    with pytest.raises(ValueError, match=r"names columns \['pixels'\]"):
        load_voc(foreign, column_mapping={"pixels": "image"})


@pytest.mark.skipif(not (SHARED / "voc_sample").is_dir(), reason="../shared/data not present")
def test_real_voc_sample_labels_match_cls_labels(tmp_path):
    names = json.loads((SHARED / "voc_sample" / "cls_labels.json").read_text())
    for split in ("train", "val"):
        ds = load_voc(SHARED / "voc_sample", split, cache_dir=tmp_path)
        for sid, labels in zip(ds["id"], ds["labels"]):
            assert labels == hot(*[VOC_CLASSES.index(n) for n in names[sid]]), sid
    all_labels = json.loads((SHARED / "voc12_image_labels.json").read_text())
    assert all(l == sorted(all_labels[s]) for s, l in zip(ds["id"], ds["labels"]))


@pytest.mark.skipif(not (SHARED / "voc_val_masks").is_dir(), reason="../shared/data not present")
def test_real_val_masks_have_valid_values():
    from agen_hf.data.decoding import decode_mask
    from agen_hf.data.schema import label_ids_from_mask

    folder = SHARED / "voc_val_masks" / "SegmentationClassAug"
    ids = (
        (SHARED / "voc_val_masks" / "val.txt").read_text().split()
        if (SHARED / "voc_val_masks" / "val.txt").exists()
        else (folder / "val.txt").read_text().split()
    )
    assert len(ids) == 1449
    all_labels = json.loads((SHARED / "voc12_image_labels.json").read_text())
    for sid in ids[:200]:
        labels = label_ids_from_mask(decode_mask(str(folder / f"{sid}.png"), 20), 20)
        assert labels == sorted(all_labels[sid]), sid


def test_common_column_names_are_recognised_and_flags_map_the_rest():
    """Image/pixel_values and annotation/label (image columns) need no mapping;
    a class-label ``label`` column is not taken for a mask; the flags build the mapping."""
    from agen_hf.data.conform import column_mapping_from

    mask = np.zeros((20, 30), dtype=np.uint8)
    mask[2:8, 2:8] = 3
    image = Image.fromarray(np.full((20, 30, 3), 90, dtype=np.uint8))
    for image_name, mask_name in (
        ("pixel_values", "label"),
        ("image", "annotation"),
        ("img", "segmentation"),
    ):
        ds = datasets.Dataset.from_dict(
            {image_name: [image], mask_name: [Image.fromarray(mask)]},
            features=datasets.Features({image_name: datasets.Image(), mask_name: datasets.Image()}),
        )
        out = load_voc(ds)
        assert out.features == FEATURES and out["labels"] == [hot(3)], (image_name, mask_name)
    classification = datasets.Dataset.from_dict(
        {"image": [image], "label": [3]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    with pytest.raises(ValueError, match="needs a 'labels'"):
        load_voc(classification)
    assert column_mapping_from() is None
    assert column_mapping_from("photo", "seg", "tags") == {
        "photo": "image",
        "seg": "mask",
        "tags": "labels",
    }


def test_mean_iou_module_accepts_pil_maps(monkeypatch, tmp_path):
    evaluate = pytest.importorskip("evaluate")
    from agen_hf.metrics import MEAN_IOU

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    metric = evaluate.load(MEAN_IOU)
    ref = np.array([[0, 1, 1], [2, 2, 255]], dtype=np.uint8)
    pred = np.array([[0, 1, 2], [2, 2, 0]], dtype=np.uint8)
    palette = Image.fromarray(ref, mode="P")
    arrays = metric.compute(predictions=[pred], references=[ref], num_labels=3, ignore_index=255)
    pil = metric.compute(
        predictions=[Image.fromarray(pred)], references=[palette], num_labels=3, ignore_index=255
    )
    # by hand: class 0 1/1, class 1 1/2, class 2 2/3
    assert pil["mean_iou"] == pytest.approx((1 + 0.5 + 2 / 3) / 3) == arrays["mean_iou"]
    metric.add_batch(predictions=[Image.fromarray(pred)], references=[palette])
    assert metric.compute(num_labels=3, ignore_index=255)["mean_iou"] == pil["mean_iou"]
    with pytest.raises(ValueError, match=r"predictions\[0\]: a class-index map has one channel"):
        metric.compute(
            predictions=[Image.new("RGB", (3, 2))],
            references=[palette],
            num_labels=3,
            ignore_index=255,
        )

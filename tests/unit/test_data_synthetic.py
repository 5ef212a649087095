import io

import numpy as np
import pytest
from PIL import Image

from agen_hf.data import SYNTHETIC_CLASS_NAMES, class_names, make_synthetic, render_sample
from agen_hf.data.schema import features, label_ids_from_mask


def test_schema_and_consistency(tmp_path):
    ds = make_synthetic(24, seed=3, image_size=64, cache_dir=tmp_path)
    assert ds.features == features(SYNTHETIC_CLASS_NAMES) and len(ds) == 24
    # the data names its own classes: shape + emblem, twins 2f (disk) and 2f + 1 (square)
    assert class_names(ds) == SYNTHETIC_CLASS_NAMES and len(SYNTHETIC_CLASS_NAMES) == 20
    assert SYNTHETIC_CLASS_NAMES[:3] == ("ellipse-disk", "ellipse-square", "box-disk")
    assert ds[0]["id"] == "synthetic-3-0"
    for row in ds:
        image, mask = row["image"], np.array(row["mask"])
        assert image.mode == "RGB" and image.size == (64, 64) and row["mask"].mode == "P"
        assert set(np.unique(mask)) <= set(range(21)) | {255}
        assert 1 <= len(row["labels"]) <= 3 and row["labels"] == sorted(row["labels"])
        # every class the mask shows is labelled (an instance under the band is no label)
        assert set(label_ids_from_mask(mask, 20)) <= set(row["labels"])
        assert (mask == 255).any()  # the boundary band


def test_same_seed_same_bytes_and_independent_of_size(tmp_path):
    a = make_synthetic(6, seed=1, image_size=64, cache_dir=tmp_path / "a")
    b = make_synthetic(6, seed=1, image_size=64, cache_dir=tmp_path / "b")
    raw = lambda ds: ds.data.table.column("image").to_pylist()
    assert [r["bytes"] for r in raw(a)] == [r["bytes"] for r in raw(b)]
    c = make_synthetic(6, seed=2, image_size=64, cache_dir=tmp_path / "c")
    assert [r["bytes"] for r in raw(a)] != [r["bytes"] for r in raw(c)]
    longer = make_synthetic(9, seed=1, image_size=64, cache_dir=tmp_path / "d")
    assert [r["bytes"] for r in raw(longer)][:6] == [r["bytes"] for r in raw(a)]


def test_render_sample_is_deterministic_and_exact():
    img1, mask1, labels1 = render_sample(5, seed=0, image_size=96)
    img2, mask2, labels2 = render_sample(5, seed=0, image_size=96)
    assert np.array_equal(img1, img2) and np.array_equal(mask1, mask2) and labels1 == labels2
    assert img1.shape == (96, 96, 3) and mask1.shape == (96, 96)
    # the band is thin: every 255 pixel touches two different labels in its 3x3 neighbourhood
    inside = mask1[1:-1, 1:-1]
    assert (inside == 255).mean() < 0.25


def test_all_classes_appear_and_vary():
    counts = np.zeros(20)
    for i in range(200):
        counts[render_sample(i, seed=0, image_size=64)[2]] += 1
    assert (counts > 0).all()


def test_cached_dataset_is_reused(tmp_path):
    make_synthetic(4, seed=0, image_size=64, cache_dir=tmp_path)
    files = list(tmp_path.iterdir())
    assert len(files) == 1 and files[0].suffix == ".arrow"
    again = make_synthetic(4, seed=0, image_size=64, cache_dir=tmp_path)
    assert again.cache_files[0]["filename"] == str(files[0])
    png = again.data.table.column("mask")[0].as_py()["bytes"]
    assert Image.open(io.BytesIO(png)).mode == "P"


def test_bad_arguments():
    with pytest.raises(ValueError, match="num_images"):
        make_synthetic(0)
    with pytest.raises(ValueError, match="image_size"):
        make_synthetic(4, image_size=8)
    with pytest.raises(ValueError, match="max_classes"):
        make_synthetic(4, min_classes=3, max_classes=2)


def test_rendering_over_several_cores_gives_the_same_rows(tmp_path, monkeypatch):
    """Chunks rendered by forked workers are the rows a single process renders, in order."""
    import os

    from agen_hf.data import synthetic

    pools = []
    get_context = synthetic.mp.get_context
    monkeypatch.setattr(synthetic.mp, "get_context", lambda m: pools.append(m) or get_context(m))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    parallel = make_synthetic(600, seed=4, image_size=32, cache_dir=tmp_path / "p")  # 3 chunks
    assert pools == ["fork"]
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    serial = make_synthetic(600, seed=4, image_size=32, cache_dir=tmp_path / "s")
    assert pools == ["fork"]  # one core: no pool
    assert parallel.data.table.equals(serial.data.table)
    assert parallel[599]["id"] == "synthetic-4-599"

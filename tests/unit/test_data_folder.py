"""A user's own tagged images (agen_hf.data.folder) and any Dataset brought to the schema
(agen_hf.data.conform): where the classes come from, and every bad input named."""

import json
import logging

import datasets
import numpy as np
import pytest
from folder_fixtures import CLASSES, draw, make_folder
from PIL import Image

from agen_hf.data import DataError, class_names, conform, features, id2label_for, load_folder
from agen_hf.data.transforms import collate, eval_transform, with_transforms
from agen_hf.data.validate import main as validate_main


def tags_of(ds):
    names = class_names(ds)
    return {sid: [names[k] for k in labels] for sid, labels in zip(ds["id"], ds["labels"])}


def test_tagged_folder_names_its_classes_sorted_and_leaves_untagged_images_out(tmp_path, caplog):
    root = make_folder(tmp_path / "photos", n=10, empty=2)
    with caplog.at_level(logging.WARNING):
        ds = load_folder(root)
    assert class_names(ds) == CLASSES and ds.features == features(CLASSES)
    assert len(ds) == 10 and "2 of 12 images have no class and no mask" in caplog.text
    rows = [json.loads(line) for line in (root / "metadata.jsonl").read_text().splitlines()]
    expected = {r["file_name"][:-4]: r["labels"] for r in rows if r["labels"]}
    assert tags_of(ds) == expected
    assert ds[0]["mask"] is None and ds[0]["image"].size == (48, 40)
    assert id2label_for(class_names(ds)) == {
        0: "background",
        1: "crack",
        2: "dent",
        3: "hole",
        4: "rust",
        5: "stain",
    }
    # the loader's multi-hot target follows the 5 classes
    batch = collate([with_transforms(ds, eval_transform())[i] for i in range(2)])
    assert batch["labels"].shape == (2, 5)
    assert batch["labels"][0].tolist() == [
        float(CLASSES[k] in expected[ds[0]["id"]]) for k in range(5)
    ]


def test_csv_metadata_and_a_given_class_order(tmp_path):
    root = make_folder(tmp_path / "photos", n=6, csv=True)
    order = ("stain", "rust", "hole", "dent", "crack", "scratch")  # a class no image has
    ds = load_folder(root, class_names=order)
    assert class_names(ds) == order
    rows = (root / "metadata.csv").read_text().splitlines()[1:]
    for row in rows:
        name, tags = row.split(",")
        assert tags_of(ds)[name[:-4]] == sorted(tags.split(";"), key=order.index)
    with pytest.raises(ValueError, match=r"id img00: unknown class 'crack'.*'rust', 'stain'"):
        load_folder(root, class_names=("rust", "stain"))


def test_validation_folder_with_masks_and_a_bad_mask_value_named_at_load(tmp_path):
    root = make_folder(tmp_path / "val", n=5, masks=True)
    ds = load_folder(root, class_names=CLASSES)
    for row in ds:
        values = set(np.unique(np.array(row["mask"]))) - {0, 255}
        assert {v - 1 for v in values} == set(row["labels"])
    mask = np.zeros((40, 48), dtype=np.uint8)
    mask[5:9, 5:9] = 9  # 5 classes: 9 is no class
    Image.fromarray(mask, mode="L").save(root / "masks" / "img03.png")
    with pytest.raises(DataError, match=r"id img03 .*mask values \[9\] outside 0..5") as err:
        load_folder(root, class_names=CLASSES)
    assert err.value.path.endswith("img03.png")
    assert validate_main([str(root)]) == 1


def test_validate_reads_a_folder(tmp_path, capsys):
    assert validate_main([str(make_folder(tmp_path / "val", n=4, masks=True))]) == 0
    out = capsys.readouterr().out
    assert "4 samples, 5 classes, 0 problems" in out and "no problems" in out


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: no such folder"):
        load_folder(tmp_path / "nowhere")


def image_rows(n=3):
    return [draw(i, [CLASSES[i % 5]])[0] for i in range(n)]


def test_a_dataset_with_classlabel_tags_names_them_from_its_features():
    names = ["cat", "dog", "fox"]
    ds = datasets.Dataset.from_dict(
        {"image": image_rows(), "tags": [[2], [0, 1], [1]]},
        features=datasets.Features(
            {"image": datasets.Image(), "tags": datasets.Sequence(datasets.ClassLabel(names=names))}
        ),
    )
    out = conform(ds)  # "tags" is recognised as the labels column
    assert class_names(out) == ("cat", "dog", "fox") and out["labels"] == [[2], [0, 1], [1]]
    assert out["id"] == ["0", "1", "2"]
    with pytest.raises(
        ValueError,
        match=r"name the classes \['cat', 'dog', 'fox'\], but "
        r"--class_names gives \['dog', 'cat', 'fox'\]",
    ):
        conform(ds, class_names=["dog", "cat", "fox"])


def test_indices_and_multi_hot_need_names_and_are_checked():
    by_index = datasets.Dataset.from_dict({"image": image_rows(), "labels": [[0], [2, 1], [1]]})
    with pytest.raises(ValueError, match="holds class indices; give the classes' names"):
        conform(by_index)
    assert conform(by_index, class_names=["a", "b", "c"])["labels"] == [[0], [1, 2], [1]]
    with pytest.raises(ValueError, match="id 1: class index 2 outside 0..1"):
        conform(by_index, class_names=["a", "b"])
    hot = datasets.Dataset.from_dict(
        {"image": image_rows(2), "labels": [[0, 1, 1], [1, 0, 0]]},
        features=datasets.Features(
            {
                "image": datasets.Image(),
                "labels": datasets.Sequence(datasets.Value("uint8"), length=3),
            }
        ),
    )
    with pytest.raises(ValueError, match="multi-hot vector of 3 classes"):
        conform(hot)
    assert conform(hot, class_names=["a", "b", "c"])["labels"] == [[1, 2], [0]]


@pytest.mark.parametrize(
    "names, words",
    [
        ([], "no class names"),
        (["a", "a"], "duplicated class names"),
        (["background", "a"], "'background' is index 0"),
        ([f"c{i}" for i in range(255)], "at most 254"),
    ],
)
def test_class_names_are_checked(names, words):
    ds = datasets.Dataset.from_dict({"image": image_rows(1), "labels": [["a"]]})
    with pytest.raises(ValueError, match=words):
        conform(ds, class_names=names)

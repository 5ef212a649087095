"""A user's own tagged photos of 5 classes, end to end: train from the tags, score on a
validation folder with masks, segment, export pseudo labels and train DeepLab on them; a saved
model of other classes is refused (or re-fitted with --ignore_mismatched_sizes); a validation
split without masks is reported as such."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from folder_fixtures import CLASSES, make_folder
from PIL import Image
from safetensors.torch import load_file

from agen_hf import AgenModel
from agen_hf.auto import load_segmentation_model

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
eval_voc = runpy.run_path(str(RECIPES / "eval_voc.py"))
predict = runpy.run_path(str(RECIPES / "predict.py"))
make_pseudo_labels = runpy.run_path(str(RECIPES / "make_pseudo_labels.py"))
LOOP = [
    "--per_device_train_batch_size",
    "4",
    "--max_train_steps",
    "2",
    "--num_workers",
    "0",
    "--crop_size",
    "40",
    "--scale_range",
    "40",
    "48",
    "--cpu",
]
TINY = ["--model_config", "tiny", "--boundary_crf", "torch", *LOOP]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-cache"))
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def recipe(name, args, env, check=True):
    proc = subprocess.run(
        [sys.executable, str(RECIPES / name), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


@pytest.fixture(scope="module")
def trained(tmp_path_factory, env):
    """A tiny AGEN trained 2 steps on 8 tagged photos, validated on 4 with masks."""
    tmp = tmp_path_factory.mktemp("own")
    photos = make_folder(tmp / "photos", n=8, empty=1)
    checked = make_folder(tmp / "checked", n=4, masks=True, seed=1)
    out = tmp / "run"
    proc = recipe(
        "train_voc.py",
        ["--train_dir", photos, "--validation_dir", checked, "--output_dir", out, *TINY],
        env,
    )
    return {"photos": photos, "checked": checked, "out": out, "proc": proc, "tmp": tmp}


def test_the_model_learns_the_folders_classes(trained):
    out = trained["out"]
    config = json.loads((out / "config.json").read_text())
    assert config["num_labels"] == 6
    assert config["id2label"] == {
        "0": "background",
        **{str(k + 1): n for k, n in enumerate(CLASSES)},
    }
    weights = load_file(out / "model.safetensors")
    assert weights["branch_a.classifier.weight"].shape[0] == 5  # C scores
    assert weights["branch_b.head.2.weight"].shape[0] == 6  # C + 1 logits
    results = json.loads((out / "eval_results.json").read_text())
    assert list(results["val_per_category_iou"]) == ["background", *CLASSES]
    assert 0 <= results["val_mean_iou"] <= 1
    assert "1 of 9 images have no class and no mask" in trained["proc"].stderr
    card = (out / "README.md").read_text()
    assert "imagefolder" in card and "| crack |" in card and "pascal-voc" not in card


def test_eval_predict_and_pseudo_labels_on_the_folders(trained, tmp_path):
    out, checked = trained["out"], trained["checked"]
    scored = eval_voc["main"](
        [
            "--model",
            str(out),
            "--dataset",
            "folder",
            "--validation_dir",
            str(checked),
            "--cpu",
            "--num_workers",
            "0",
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert scored["num_images"] == 4 and list(scored["per_category_iou"]) == [
        "background",
        *CLASSES,
    ]
    results = json.loads((out / "eval_results.json").read_text())
    assert scored["mean_iou"] == pytest.approx(results["val_mean_iou"], abs=1e-9)
    report = predict["main"](
        [
            "--model",
            str(out),
            "--images",
            str(checked),
            "--out",
            str(tmp_path / "pred"),
            "--cpu",
            "--num_workers",
            "0",
        ]
    )
    assert report["written"] == 4 and not report["failed"]
    mask = np.array(Image.open(tmp_path / "pred" / "masks" / "img00.png"))
    assert mask.shape == (40, 48) and mask.max() <= 5
    pseudo = tmp_path / "pseudo"
    report = make_pseudo_labels["main"](
        [
            "--model",
            str(out),
            "--train_dir",
            str(trained["photos"]),
            "--out",
            str(pseudo),
            "--num_workers",
            "0",
            "--cpu",
        ]
    )
    assert report["images"] == 8 and (pseudo / "pseudo_labels.arrow").is_file()
    import datasets

    table = datasets.Dataset.from_file(str(pseudo / "pseudo_labels.arrow"))
    assert table.features["labels"].feature.names == list(CLASSES)
    for row in table.cast_column("mask", datasets.Image(decode=False)):
        written = np.array(Image.open(row["mask"]["path"]))
        assert set(np.unique(written)) <= {0} | {c + 1 for c in row["labels"]}


def test_deeplab_on_the_folders_pseudo_labels(trained, tmp_path, env):
    pseudo = tmp_path / "pseudo"
    make_pseudo_labels["main"](
        [
            "--model",
            str(trained["out"]),
            "--train_dir",
            str(trained["photos"]),
            "--out",
            str(pseudo),
            "--num_workers",
            "0",
            "--cpu",
        ]
    )
    config = tmp_path / "deeplab.json"
    config.write_text(
        json.dumps(
            {
                "backbone": "vgg16",
                "head": "largefov",
                "fc_channels": 16,
                "vgg_channels": [8, 8, 16, 16, 16],
                "vgg_depths": [1, 1, 1, 1, 1],
            }
        )
    )
    deeplab = tmp_path / "deeplab"
    recipe(
        "train_deeplab.py",
        [
            "--pseudo_root",
            pseudo,
            "--train_dir",
            trained["photos"],
            "--validation_dir",
            trained["checked"],
            "--model_config",
            config,
            "--output_dir",
            deeplab,
            *LOOP,
        ],
        env,
    )
    model = load_segmentation_model(deeplab)
    assert model.config.num_labels == 6 and model.config.id2label[5] == "stain"
    results = json.loads((deeplab / "eval_results.json").read_text())
    assert list(results["val_per_category_iou"]) == ["background", *CLASSES]


def test_a_model_of_other_classes_is_refused_or_refitted(trained, tmp_path, env):
    from agen_hf import AgenConfig

    voc_model = tmp_path / "voc-model"
    AgenModel(AgenConfig.tiny()).save_pretrained(voc_model)  # 20 VOC classes
    args = [
        "--train_dir",
        trained["photos"],
        "--model_name_or_path",
        voc_model,
        "--output_dir",
        tmp_path / "ft",
        "--boundary_crf",
        "torch",
        *LOOP,
    ]
    proc = recipe("train_voc.py", args, env, check=False)
    assert proc.returncode != 0
    assert "knows 20 classes ['aeroplane', 'bicycle'" in proc.stderr
    assert "has 5 classes ['crack', 'dent', 'hole', 'rust', 'stain']" in proc.stderr
    assert "--ignore_mismatched_sizes" in proc.stderr
    proc = recipe("train_voc.py", [*args, "--ignore_mismatched_sizes"], env)
    line = next(x for x in proc.stderr.splitlines() if "re-initialised" in x)
    assert "20 classes -> the training data (folder)'s 5" in line
    assert {
        "branch_a.classifier.weight",
        "branch_b.head.2.weight",
        "agm.seg_shared.1.weight",
    } <= set(line.split("re-initialised ")[1].split(", "))
    fitted = AgenModel.from_pretrained(tmp_path / "ft")
    assert fitted.config.id2label[1] == "crack" and fitted.config.num_labels == 6
    source = AgenModel.from_pretrained(voc_model).state_dict()
    # every weight outside the class layers came from the saved model (2 steps moved them a
    # little; a fresh init would be far away)
    kernel = "stem.blocks.0.convs.0.weight"
    if kernel in source:
        delta = (fitted.state_dict()[kernel] - source[kernel]).abs().max()
        assert delta < 0.1 * source[kernel].abs().max()


def test_a_validation_split_without_masks_is_reported_not_nan(trained, tmp_path, env):
    out = tmp_path / "run"
    proc = recipe(
        "train_voc.py",
        [
            "--train_dir",
            trained["photos"],
            "--validation_dir",
            trained["photos"],
            "--output_dir",
            out,
            *TINY,
        ],
        env,
    )
    assert "no masks, so no mIoU" in proc.stderr and "no masks to score" in proc.stdout
    results = json.loads((out / "eval_results.json").read_text())
    assert results["val_mean_iou"] is None and results["val_scored"].startswith("no masks")
    assert "nan" not in (out / "README.md").read_text().lower()
    proc = subprocess.run(
        [
            sys.executable,
            str(RECIPES / "eval_voc.py"),
            "--model",
            str(out),
            "--dataset",
            "folder",
            "--validation_dir",
            str(trained["photos"]),
            "--cpu",
            "--num_workers",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode != 0 and "no masks, so nothing to score" in proc.stderr


def test_a_dataset_built_in_python_trains_through_save_to_disk(tmp_path, env):
    """A ``DatasetDict`` of 5 classes (``Sequence(ClassLabel)`` tags) made in Python, saved
    with ``save_to_disk``, is ``--dataset_name DIR`` to every recipe."""
    import datasets
    from folder_fixtures import draw

    names = ["kiwi", "lime", "plum", "pear", "fig"]  # label order is the feature's, not sorted
    feats = datasets.Features(
        {"image": datasets.Image(), "tags": datasets.Sequence(datasets.ClassLabel(names=names))}
    )

    def split(n, seed):
        tags = [[(i + seed) % 5] for i in range(n)]
        images = [draw(seed * 100 + i, [CLASSES[t[0]]])[0] for i, t in enumerate(tags)]
        return datasets.Dataset.from_dict({"image": images, "tags": tags}, features=feats)

    datasets.DatasetDict({"train": split(8, 0), "validation": split(4, 1)}).save_to_disk(
        tmp_path / "fruit"
    )
    out = tmp_path / "run"
    proc = recipe(
        "train_voc.py", ["--dataset_name", tmp_path / "fruit", "--output_dir", out, *TINY], env
    )
    config = json.loads((out / "config.json").read_text())
    assert [config["id2label"][str(k)] for k in range(1, 6)] == names
    assert "no masks, so no mIoU" in proc.stderr  # its validation split has tags only


def test_visualize_on_the_validation_folder(trained, tmp_path):
    visualize = runpy.run_path(str(RECIPES / "visualize.py"))
    paths = visualize["main"](
        [
            "--model",
            str(trained["out"]),
            "--validation_dir",
            str(trained["checked"]),
            "--num_images",
            "2",
            "--cell",
            "48",
            "--out",
            str(tmp_path / "fig"),
        ]
    )
    assert [p.name for p in paths] == ["fig4_cams.png", "fig5_segmentation.png"]
    assert Image.open(paths[0]).size[1] > 2 * 48  # two rows of pictures


def test_a_sample_id_that_would_leave_the_output_folder_is_refused(trained, tmp_path):
    """A dataset's ``id`` column with ``../../x`` stops make_pseudo_labels.py before
    any work, naming the id; nothing is written outside ``--out``."""
    import datasets
    from folder_fixtures import draw

    feats = datasets.Features(
        {
            "id": datasets.Value("string"),
            "image": datasets.Image(),
            "tags": datasets.Sequence(datasets.ClassLabel(names=CLASSES)),
        }
    )
    ids = ["ok/one", "../../escape"]
    images = [draw(i, [CLASSES[i]])[0] for i in range(2)]
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_dict(
                {"id": ids, "image": images, "tags": [[0], [1]]}, features=feats
            )
        }
    ).save_to_disk(tmp_path / "data")
    out = tmp_path / "a" / "b" / "pseudo"
    with pytest.raises(SystemExit) as e:
        make_pseudo_labels["main"](
            [
                "--model",
                str(trained["out"]),
                "--dataset_name",
                str(tmp_path / "data"),
                "--out",
                str(out),
                "--cpu",
                "--num_workers",
                "0",
            ]
        )
    assert "sample id '../../escape': would write outside" in str(e.value)
    assert (
        not (tmp_path / "a" / "escape.png").exists() and not (out / "SegmentationClassAug").exists()
    )

"""The recipes on a tiny COCO-format root (4 classes of sparse ids): two training steps,
evaluation, pseudo-label export, the validator and the COCO preset."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pycocotools")
from coco_fixtures import CATEGORIES, NAMES, box, write_split  # noqa: E402

from agen_hf.data.validate import main as validate_main  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"
eval_voc = runpy.run_path(str(RECIPES / "eval_voc.py"))
make_pseudo_labels = runpy.run_path(str(RECIPES / "make_pseudo_labels.py"))
predict = runpy.run_path(str(RECIPES / "predict.py"))


def annotations(n, seed):
    """``n`` images with one or two boxes of the 4 categories each (some overlapping)."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(1, n + 1):
        cats = rng.choice([1, 3, 18, 90], size=int(rng.integers(1, 3)), replace=False)
        out[i] = [
            (int(c), box(int(x), int(y), int(x) + 14, int(y) + 12), 0)
            for c, x, y in zip(cats, rng.integers(0, 24, 2), rng.integers(0, 18, 2))
        ]
    out[n + 1] = []  # no annotation: left out
    return out


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("hf-cache"))
    root = tmp_path_factory.mktemp("coco")
    write_split(root, "train2014", annotations(8, 0), CATEGORIES)
    write_split(root, "val2014", annotations(3, 1), CATEGORIES)
    return root


@pytest.fixture(scope="module")
def trained(coco, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(RECIPES / "train_voc.py"),
            "--coco_root",
            str(coco),
            "--model_config",
            "tiny",
            "--boundary_crf",
            "torch",
            "--per_device_train_batch_size",
            "4",
            "--max_train_steps",
            "2",
            "--num_workers",
            "0",
            "--crop_size",
            "32",
            "--scale_range",
            "32",
            "40",
            "--cpu",
            "--output_dir",
            str(out),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out


def test_training_on_coco_learns_its_classes(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["num_labels"] == 5
    assert [config["id2label"][str(k)] for k in range(5)] == ["background", *NAMES]
    results = json.loads((trained / "eval_results.json").read_text())
    assert list(results["val_per_category_iou"]) == ["background", *NAMES]
    from huggingface_hub import ModelCard

    card = ModelCard.load(trained / "README.md")
    assert "coco" in card.data.tags and card.data.datasets == ["coco"]
    (entry,) = card.data.eval_results
    assert (entry.dataset_name, entry.dataset_type, entry.dataset_split) == (
        "MS COCO 2014",
        "coco",
        "val2014",
    )
    assert "(B, 5, H/8, W/8)" in card.text and "4 classes: person, car, dog" in card.text


def test_eval_and_pseudo_labels_on_coco(trained, coco, tmp_path):
    scored = eval_voc["main"](
        [
            "--model",
            str(trained),
            "--coco_root",
            str(coco),
            "--cpu",
            "--num_workers",
            "0",
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert scored["split"] == "val2014" and scored["num_images"] == 3
    results = json.loads((trained / "eval_results.json").read_text())
    assert scored["mean_iou"] == pytest.approx(results["val_mean_iou"], abs=1e-9)
    report = make_pseudo_labels["main"](
        [
            "--model",
            str(trained),
            "--coco_root",
            str(coco),
            "--out",
            str(tmp_path / "pseudo"),
            "--num_workers",
            "0",
            "--cpu",
        ]
    )
    assert report["split"] == "train2014" and report["images"] == 8
    assert report["scored_against_ground_truth"] == 8
    assert list(report["per_category_iou"]) == ["background", *NAMES]
    import datasets

    table = datasets.Dataset.from_file(str(tmp_path / "pseudo" / "pseudo_labels.arrow"))
    assert table.features["labels"].feature.names == list(NAMES)


def test_predict_with_the_coco_model(trained, coco, tmp_path):
    from PIL import Image

    report = predict["main"](
        [
            "--model",
            str(trained),
            "--images",
            str(coco / "val2014"),
            "--out",
            str(tmp_path / "pred"),
            "--cpu",
            "--num_workers",
            "0",
        ]
    )
    assert report["written"] == 4 and not report["failed"]  # the unannotated image too
    mask = Image.open(tmp_path / "pred" / "masks" / "COCO_val2014_000000000001.png")
    assert mask.mode == "P" and mask.size == (40, 32) and np.array(mask).max() <= 4


def test_validate_reads_a_coco_root(coco, capsys):
    assert validate_main([str(coco)]) == 0
    out = capsys.readouterr().out
    assert "train2014: 8 samples, 4 classes, 0 problems" in out
    assert "val2014: 3 samples, 4 classes, 0 problems" in out


def test_the_coco_preset_parses(coco):
    sys.path.insert(0, str(RECIPES))
    from train_voc import parse_args

    data, agen, training = parse_args(
        ["--config", str(RECIPES / "configs" / "coco.yaml"), "--coco_root", str(coco)]
    )
    assert (data.dataset, data.train_split, data.eval_split) == ("coco", "train2014", "val2014")
    assert agen.model_config == "paper" and training.max_train_steps == 42700
    assert training.crop_size == 321 and tuple(training.scale_range) == (321, 481)

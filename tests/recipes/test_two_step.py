"""Two-step AGEN on the synthetic data at tiny sizes: train AGEN, export its pseudo labels,
train DeepLab on them, evaluate it."""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import datasets
import numpy as np
import pytest
from PIL import Image
from voc_fixtures import write_synthetic_voc

from agen_hf.auto import load_segmentation_model
from agen_hf.data import load_voc
from agen_hf.deeplab import DeepLabConfig, DeepLabModel

ROOT = Path(__file__).resolve().parents[2]
make_pseudo_labels = runpy.run_path(str(ROOT / "recipes" / "make_pseudo_labels.py"))
eval_voc = runpy.run_path(str(ROOT / "recipes" / "eval_voc.py"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    cache = tmp_path_factory.mktemp("hf-cache")
    os.environ["HF_DATASETS_CACHE"] = str(cache)
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def recipe(name, args, env):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "recipes" / name), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_two_step_agen_on_synthetic_data(tmp_path, env):
    voc = write_synthetic_voc(tmp_path / "voc", {"train_aug": 12, "val": 4})
    common = [
        "--num_workers",
        "0",
        "--per_device_train_batch_size",
        "4",
        "--max_train_steps",
        "3",
        "--crop_size",
        "48",
        "--scale_range",
        "48",
        "56",
        "--cpu",
    ]
    # step 0: AGEN from image-level labels
    agen = tmp_path / "agen"
    recipe(
        "train_voc.py",
        [
            "--voc_root",
            voc,
            "--model_config",
            "tiny",
            "--boundary_crf",
            "torch",
            "--output_dir",
            agen,
            *common,
        ],
        env,
    )
    # step 1: its segmentation of train_aug, as a VOC root and as a datasets table
    pseudo = tmp_path / "pseudo"
    report = make_pseudo_labels["main"](
        [
            "--model",
            str(agen),
            "--voc_root",
            str(voc),
            "--out",
            str(pseudo),
            "--format",
            "datasets",
            "--num_workers",
            "0",
            "--cpu",
        ]
    )
    assert report["images"] == 12 and report["scored_against_ground_truth"] == 12
    assert 0 <= report["mean_iou"] <= 1
    ids = (voc / "ImageSets/Segmentation/train_aug.txt").read_text().split()
    source = load_voc(voc, "train_aug")
    labels = dict(zip(source["id"], source["labels"]))
    back = load_voc(pseudo, "train_aug", require_foreground=False)  # the round trip
    assert back["id"] == ids
    for row in back.cast_column("mask", datasets.Image(decode=False)):
        png = Image.open(row["mask"]["path"])
        written = np.array(png)
        assert (
            png.mode == "P"
            and written.shape
            == np.array(Image.open(voc / "JPEGImages" / f"{row['id']}.jpg")).shape[:2]
        )
        # restricted to background + the image-level classes
        assert set(np.unique(written)) <= {0} | {c + 1 for c in labels[row["id"]]}
    table = load_voc(datasets.Dataset.from_file(str(pseudo / "pseudo_labels.arrow")))
    assert table["id"] == ids and table["labels"] == [labels[i] for i in ids]
    # step 2: DeepLab-LargeFOV (VGG16, tiny widths) on the pseudo labels, validated on val
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
            "--voc_root",
            voc,
            "--model_config",
            config,
            "--output_dir",
            deeplab,
            "--learning_rate",
            "0.01",
            *common,
        ],
        env,
    )
    results = json.loads((deeplab / "eval_results.json").read_text())
    assert results["steps"] == 3 and results["supervision"] == "pseudo labels"
    model = load_segmentation_model(deeplab)
    assert isinstance(model, DeepLabModel) and model.config.backbone == "vgg16"
    assert "Two-step AGEN" in (deeplab / "README.md").read_text()
    scored = eval_voc["main"](
        [
            "--model",
            str(deeplab),
            "--voc_root",
            str(voc),
            "--cpu",
            "--num_workers",
            "0",
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert scored["mean_iou"] == pytest.approx(results["val_mean_iou"], abs=1e-9)


def test_deeplab_models_shapes_groups_and_round_trip(tmp_path):
    tiny_vgg = DeepLabConfig(
        backbone="vgg16",
        head="aspp",
        vgg_channels=(8, 8, 16, 16, 16),
        vgg_depths=(1, 1, 1, 1, 1),
        fc_channels=16,
    )
    model = DeepLabModel(tiny_vgg)
    import torch

    x = torch.randn(2, 3, 41, 50)
    assert model(x).logits.shape == (2, 21, 6, 7)  # stride 8, ceil
    assert len(model.net.heads) == 4  # ASPP-L: dilations 6, 12, 18, 24
    groups = model.parameter_groups()
    assert {id(p) for p in groups["backbone"]} == {id(p) for p in model.net.features.parameters()}
    model.save_pretrained(tmp_path / "m")
    loaded = DeepLabModel.from_pretrained(tmp_path / "m")
    assert loaded.config == tiny_vgg and not loaded.training
    model.eval()
    assert torch.equal(model(x).logits, loaded(x).logits)
    resnet = DeepLabModel(DeepLabConfig(resnet_layers=(1, 1, 1, 1))).eval()
    assert resnet(x[:1]).logits.shape == (1, 21, 41, 50)  # torchvision upsamples to the input
    with pytest.raises(ValueError, match="backbone: backbone 'alexnet': not registered"):
        DeepLabConfig(backbone="alexnet")
    with pytest.raises(ValueError, match="head: must be one of"):
        DeepLabConfig(head="psp")

"""Recipes/eval_voc.py and recipes/visualize.py on a VOCdevkit written by the tests, on 2
gloo processes, and on the real VOC sample in ../shared when it is there."""

import json
import os
import runpy
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from reference_metrics import hub_mean_iou
from voc_fixtures import make_voc

from agen_hf import AgenConfig, AgenImageProcessor, AgenModel, segment

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT.parent / "shared" / "data" / "voc_sample"
eval_voc = runpy.run_path(str(ROOT / "recipes" / "eval_voc.py"))
visualize = runpy.run_path(str(ROOT / "recipes" / "visualize.py"))


@pytest.fixture(scope="module")
def voc(tmp_path_factory):
    os.environ["HF_DATASETS_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    return make_voc(tmp_path_factory.mktemp("voc"))


def reference(model_dir, voc_root, ids, scales=(1.0,), flip=False):
    """Segment each val image with ``segment``, score with the Hub algorithm."""
    model = AgenModel.from_pretrained(model_dir)
    proc = AgenImageProcessor.from_pretrained(model_dir)
    preds = [
        segment(model, Image.open(voc_root / "JPEGImages" / f"{i}.jpg"), proc, scales, flip)
        for i in ids
    ]
    refs = [np.array(Image.open(voc_root / "SegmentationClass" / f"{i}.png")) for i in ids]
    return hub_mean_iou(preds, refs, 21, 255)


@pytest.mark.parametrize("tta", [[], ["--scales", "0.5", "1", "1.5", "--flip"]])
def test_eval_equals_segmenting_each_image_and_scoring_it(model_dir, voc, tmp_path, capsys, tta):
    out = tmp_path / "eval.json"
    result = eval_voc["main"](
        [
            "--model",
            str(model_dir),
            "--voc_root",
            str(voc),
            "--cpu",
            "--num_workers",
            "0",
            "--output",
            str(out),
            *tta,
        ]
    )
    expected = reference(model_dir, voc, ["c", "d"], *(((0.5, 1, 1.5), True) if tta else ()))
    saved = json.loads(out.read_text())
    assert saved["num_images"] == 2 and saved["flip"] == bool(tta)
    assert saved["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
    assert list(saved["per_category_iou"]) == list(AgenConfig().id2label.values())
    got = np.array(list(saved["per_category_iou"].values()), dtype=float)
    assert np.allclose(got, expected["per_category_iou"], equal_nan=True)
    assert result["mean_iou"] == saved["mean_iou"]
    printed = capsys.readouterr().out
    header = next(line for line in printed.splitlines() if line.startswith("| Method"))
    assert header.split("|")[2].strip() == "bkg" and header.split("|")[-2].strip() == "mIoU"
    assert f"{100 * expected['mean_iou']:.1f} |" in printed


def test_eval_with_crf_and_bad_arguments(model_dir, voc, tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    result = eval_voc["main"](
        [
            "--model",
            str(model_dir),
            "--voc_root",
            str(voc),
            "--cpu",
            "--num_workers",
            "0",
            "--crf",
            "--crf_processes",
            "0",
            "--crf_iterations",
            "3",
            "--output",
            str(tmp_path / "e.json"),
        ]
    )
    assert result["crf"] and result["crf_params"]["iterations"] == 3
    assert 0 <= result["mean_iou"] <= 1
    with pytest.raises(SystemExit):
        eval_voc["main"](["--model", str(model_dir)])  # no data
    (voc / "ImageSets/Segmentation/test.txt").write_text("a\nb\n")
    # a test split: images without masks cannot be scored
    moved = [voc / d / "b.png" for d in ("SegmentationClass", "SegmentationClassAug")]
    for m in moved:
        m.rename(m.with_suffix(".bak"))
    try:
        with pytest.raises(
            SystemExit, match="(?s)b.jpg: no mask .*every image of the 'test' split needs one"
        ):
            eval_voc["main"](
                [
                    "--model",
                    str(model_dir),
                    "--voc_root",
                    str(voc),
                    "--cpu",
                    "--split",
                    "test",
                    "--num_workers",
                    "0",
                ]
            )
    finally:
        for m in moved:
            m.with_suffix(".bak").rename(m)


def test_two_gloo_processes_give_the_same_numbers(model_dir, voc, tmp_path):
    from workers import launch, torchrun

    one, two = tmp_path / "one.json", tmp_path / "two.json"
    args = ["--model", str(model_dir), "--voc_root", str(voc), "--num_workers", "0"]
    eval_voc["main"](args + ["--cpu", "--output", str(one)])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    job = launch(
        torchrun(
            [str(ROOT / "recipes/eval_voc.py"), *args, "--ddp_timeout", "60", "--output", str(two)]
        ),
        env,
        tmp_path / "logs",
    )
    assert job.returncode == 0, job.tail(60)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["processes"] == 2 and a["processes"] == 1
    assert a["mean_iou"] == b["mean_iou"] and a["per_category_iou"] == b["per_category_iou"]


def test_visualize_writes_both_figures(model_dir, voc, tmp_path):
    paths = visualize["main"](
        [
            "--model",
            str(model_dir),
            "--voc_root",
            str(voc),
            "--ids",
            "d",
            "c",
            "--cell",
            "40",
            "--out",
            str(tmp_path),
        ]
    )
    fig4, fig5 = (Image.open(p) for p in paths)
    assert fig4.size == (8 * 44 + 4, 16 + 2 * 44 + 4)
    assert fig5.size == (3 * 44 + 4, 16 + 2 * 44 + 4)
    # row 1 is image d: its ground truth (class 20, tv monitor) is drawn in its colour
    gt = np.array(fig5)[16 + 4 : 16 + 44, 48:88]
    assert (gt.reshape(-1, 3) == [0, 64, 128]).all(axis=1).any()
    with pytest.raises(SystemExit, match="zzz not in the val split"):
        visualize["main"](["--model", str(model_dir), "--voc_root", str(voc), "--ids", "zzz"])


@pytest.mark.skipif(not SAMPLE.is_dir(), reason="../shared/data/voc_sample is not here")
def test_the_real_voc_sample_end_to_end(model_dir, tmp_path):
    predict = runpy.run_path(str(ROOT / "recipes" / "predict.py"))
    scored = 0
    for split in ("train", "val"):  # 4 + 7: all 11 real images
        ids = (SAMPLE / "ImageSets" / "Segmentation" / f"{split}.txt").read_text().split()
        result = eval_voc["main"](
            [
                "--model",
                str(model_dir),
                "--voc_root",
                str(SAMPLE),
                "--cpu",
                "--split",
                split,
                "--num_workers",
                "0",
                "--output",
                str(tmp_path / f"{split}.json"),
            ]
        )
        assert result["num_images"] == len(ids)
        expected = reference(model_dir, SAMPLE, ids)
        assert result["mean_iou"] == pytest.approx(expected["mean_iou"], abs=1e-12)
        scored += len(ids)
    assert scored == 11
    report = predict["main"](
        [
            "--model",
            str(model_dir),
            "--images",
            str(SAMPLE / "JPEGImages"),
            "--out",
            str(tmp_path / "pred"),
            "--num_workers",
            "0",
            "--cpu",
        ]
    )
    jpegs = sorted((SAMPLE / "JPEGImages").glob("*.jpg"))
    assert (report["written"], report["failed"]) == (len(jpegs), {})
    for jpg in jpegs:
        mask = Image.open(tmp_path / "pred" / "masks" / f"{jpg.stem}.png")
        assert mask.mode == "P" and mask.size == Image.open(jpg).size
    visualize["main"](
        ["--model", str(model_dir), "--voc_root", str(SAMPLE), "--out", str(tmp_path / "figs")]
    )
    assert (tmp_path / "figs" / "fig5_segmentation.png").is_file()

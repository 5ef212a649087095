"""A decompression bomb (found when the header is read) and a truncated
JPEG (found only when its pixels are decoded) in every path that takes ``--skip_bad_samples``
(load_voc, images given as bytes like a Hub dataset's, make_pseudo_labels.py, eval_voc.py,
the training recipe) and in predict.py: named in an error without the flag, skipped with it,
and the run then exits 3 saying what was left out, keeping everything that succeeded."""

import io
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
from voc_fixtures import break_sample, good_pair, make_voc, write_bomb

from agen_hf.data import DataError, load_voc
from agen_hf.data.decoding import skipped_when_loaded
from agen_hf.data.transforms import eval_transform, with_transforms
from agen_hf.data.validate import check_dataset
from agen_hf.engine.exits import INCOMPLETE_EXIT
from agen_hf.engine.sampling import SeededSamples

ROOT = Path(__file__).resolve().parents[2]
RECIPES = ROOT / "recipes"


@pytest.fixture
def voc(tmp_path, monkeypatch):
    """A VOC root whose train_aug split (a, b, e) holds a bomb (b) and a truncated JPEG (e),
    and whose val split (a, c, d) holds a bomb (c) and a truncated JPEG (d)."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    root = make_voc(tmp_path / "voc")
    break_sample(root, "b", "bomb")
    break_sample(root, "e", "truncated")
    break_sample(root, "c", "bomb")
    break_sample(root, "d", "truncated")
    (root / "ImageSets/Segmentation/val.txt").write_text("a\nc\nd\n")
    return root


def run(recipe: str, args: list, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(RECIPES / recipe), *map(str, args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        cwd=cwd,
    )


def test_load_voc_counts_what_it_skipped_and_the_cache_remembers(voc, tmp_path):
    with pytest.raises(DataError, match=r"b.jpg: refused as a decompression bomb"):
        load_voc(voc, "train_aug", cache_dir=tmp_path / "c")
    for _ in range(2):  # built, then read back from the Arrow cache
        ds = load_voc(voc, "train_aug", skip_bad_samples=True, cache_dir=tmp_path / "c")
        assert ds["id"] == ["a", "e"] and skipped_when_loaded(ds) == 1
    assert (
        skipped_when_loaded(
            load_voc(make_voc(tmp_path / "clean"), "train", cache_dir=tmp_path / "c")
        )
        == 0
    )
    samples = SeededSamples(with_transforms(ds, eval_transform(), skip_bad_samples=True), 0)
    assert samples[1]["replaced"] == "e" and samples[1]["id"] == "a"  # found when decoded


def test_images_given_as_bytes_like_a_hub_dataset(tmp_path):
    """A Hub dataset's images are bytes in Arrow, not files: the same two faults, the same
    outcome, named by the sample's id in the validator."""

    def png(array) -> bytes:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, format="PNG")
        return buffer.getvalue()

    image, mask = good_pair(0, classes=(2, 15))
    whole = png(image)
    write_bomb(tmp_path / "bomb.png")
    images = [whole, (tmp_path / "bomb.png").read_bytes(), whole[: len(whole) // 2]]
    hub = datasets.Dataset.from_dict(
        {
            "image": [{"bytes": b, "path": None} for b in images],
            "mask": [{"bytes": png(mask), "path": None}] * 3,
        },
        features=datasets.Features({"image": datasets.Image(), "mask": datasets.Image()}),
    )
    ds = load_voc(hub)
    assert ds["id"] == ["0", "1", "2"]
    with pytest.raises(DataError, match="refused as a decompression bomb"):
        with_transforms(ds, eval_transform())[1]
    with pytest.raises(DataError, match="truncated or corrupt image"):
        with_transforms(ds, eval_transform())[2]
    samples = SeededSamples(with_transforms(ds, eval_transform(), skip_bad_samples=True), 0)
    assert [samples[i].get("replaced") for i in range(3)] == [None, "1", "2"]
    report = io.StringIO()
    assert check_dataset(ds, "hub", report) == 2
    assert "id 1: <image bytes>: refused as a decompression bomb" in report.getvalue()
    assert "id 2: <image bytes>: truncated or corrupt image" in report.getvalue()


def test_pseudo_labels_name_the_file_or_skip_it_and_exit_3(voc, model_dir, tmp_path):
    out = tmp_path / "pseudo"
    base = [
        "--model",
        model_dir,
        "--voc_root",
        voc,
        "--split",
        "train_aug",
        "--out",
        out,
        "--num_workers",
        "0",
        "--cpu",
    ]
    proc = run("make_pseudo_labels.py", base, tmp_path)
    assert proc.returncode == 1 and "b.jpg: refused as a decompression bomb" in proc.stderr
    break_sample(voc, "b", "missing")  # the bomb gone: the truncated JPEG is found when decoded
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("a\ne\n")
    proc = run("make_pseudo_labels.py", base, tmp_path)
    assert proc.returncode == 1 and "e.jpg: truncated or corrupt image" in proc.stderr
    assert "pass --skip_bad_samples" in proc.stderr
    assert (out / "SegmentationClassAug" / "a.png").is_file()  # written before e: kept
    break_sample(voc, "b", "bomb")
    (voc / "ImageSets/Segmentation/train_aug.txt").write_text("a\nb\ne\n")
    proc = run("make_pseudo_labels.py", [*base, "--skip_bad_samples"], tmp_path)
    assert proc.returncode == INCOMPLETE_EXIT, proc.stderr[-3000:]
    assert "finished with problems (exit 3): 2 bad images were skipped" in proc.stdout
    report = json.loads((out / "pseudo_labels_report.json").read_text())
    assert report["images"] == 1 and report["skipped_when_loaded"] == 1
    assert list(report["skipped"]) == ["e"] and "truncated" in report["skipped"]["e"]
    assert (out / "ImageSets/Segmentation/train_aug.txt").read_text() == "a\n"
    assert sorted(p.name for p in (out / "SegmentationClassAug").iterdir()) == ["a.png"]


def test_eval_scores_the_good_images_and_exits_3(voc, model_dir, tmp_path):
    result = tmp_path / "eval.json"
    base = [
        "--model",
        model_dir,
        "--voc_root",
        voc,
        "--output",
        result,
        "--num_workers",
        "0",
        "--cpu",
    ]
    proc = run("eval_voc.py", base, tmp_path)
    assert proc.returncode == 1 and "c.jpg: refused as a decompression bomb" in proc.stderr
    proc = run("eval_voc.py", [*base, "--skip_bad_samples"], tmp_path)
    assert proc.returncode == INCOMPLETE_EXIT, proc.stderr[-3000:]
    assert (
        "finished with problems (exit 3): 2 bad images were skipped and not scored" in proc.stdout
    )
    saved = json.loads(result.read_text())
    assert saved["num_images"] == 2 and saved["skipped"] == 2  # c at load, d when decoded
    alone = tmp_path / "alone.json"  # the score is a's alone
    (voc / "ImageSets/Segmentation/val.txt").write_text("a\n")
    assert run("eval_voc.py", [*base[:4], "--output", alone, *base[6:]], tmp_path).returncode == 0
    assert json.loads(alone.read_text())["mean_iou"] == saved["mean_iou"]


def test_training_reports_samples_skipped_at_load(voc, tmp_path):
    """The training recipe: a bomb left out of the index, a truncated JPEG replaced, both
    counted, the model saved, exit 3."""
    out = tmp_path / "run"
    proc = run(
        "train_voc.py",
        [
            "--voc_root",
            voc,
            "--train_split",
            "train_aug",
            "--eval_split",
            "val",
            "--model_config",
            "tiny",
            "--boundary_crf",
            "torch",
            "--max_train_steps",
            "2",
            "--per_device_train_batch_size",
            "2",
            "--crop_size",
            "40",
            "--scale_range",
            "40",
            "48",
            "--num_workers",
            "0",
            "--cpu",
            "--skip_bad_samples",
            "--output_dir",
            out,
        ],
        tmp_path,
    )
    assert proc.returncode == INCOMPLETE_EXIT, proc.stderr[-3000:]
    figures = json.loads((out / "eval_results.json").read_text())
    assert figures["bad_samples_skipped"] == 3  # b and c at load, d in the final validation
    assert figures["bad_samples_replaced"] >= 1  # e, each time it is drawn
    assert (out / "model.safetensors").is_file()
    assert "bad samples were skipped when the data was loaded" in proc.stdout


def test_predict_lists_a_bomb_with_the_failures_and_exits_3(model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((16, 24, 3), np.uint8)).save(folder / "good.png")
    write_bomb(folder / "bomb.png")
    proc = run(
        "predict.py",
        ["--model", model_dir, "--images", folder, "--out", tmp_path / "out", "--num_workers", "0"],
        tmp_path,
    )
    assert proc.returncode == INCOMPLETE_EXIT, proc.stderr[-3000:]
    assert "DecompressionBombError" in proc.stderr
    assert "finished with problems (exit 3): 1 image(s) failed" in proc.stdout
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    assert report["written"] == 1 and list(report["failed"]) == [str(folder / "bomb.png")]


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_a_crf_time_limit_must_be_positive(value, capsys):
    from agen_hf.crf import CrfPool

    eval_voc = runpy.run_path(str(RECIPES / "eval_voc.py"))
    with pytest.raises(SystemExit) as e:
        eval_voc["parse_args"](["--model", "m", "--crf_timeout", value])
    assert e.value.code == 2
    assert f"argument --crf_timeout: must be > 0, got {value}" in capsys.readouterr().err
    with pytest.raises(ValueError, match="timeout: must be > 0 seconds or None"):
        CrfPool(timeout=float(value))

"""Recipes/predict.py: every image mode and size, bad files, the VOC server layout."""

import json
import os
import runpy
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from agen_hf import AgenImageProcessor, AgenModel, segment
from agen_hf.data import voc_palette

ROOT = Path(__file__).resolve().parents[2]
predict = runpy.run_path(str(ROOT / "recipes" / "predict.py"))


def write_images(folder: Path) -> dict[str, tuple[int, int]]:
    """One file per mode and extreme size; returns name -> (width, height)."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rgb = lambda h, w: rng.integers(0, 256, (h, w, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(rgb(37, 53)).save(folder / "rgb.jpg")
    Image.fromarray(rgb(10, 10)).save(folder / "tiny.png")
    Image.fromarray(rgb(3000, 4000)).save(folder / "huge.jpg", quality=50)
    Image.fromarray(rgb(21, 30)[..., 0]).save(folder / "gray.png")
    Image.fromarray(np.dstack([rgb(20, 31), rgb(20, 31)[..., :1]]), "RGBA").save(
        folder / "rgba.png"
    )
    Image.fromarray(rgb(22, 29)).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(rng.integers(0, 65535, (25, 33), dtype=np.uint16)).save(folder / "sixteen.png")
    Image.fromarray(rgb(26, 19)).convert("P").save(folder / "palette.png")
    return {
        "rgb": (53, 37),
        "tiny": (10, 10),
        "huge": (4000, 3000),
        "gray": (30, 21),
        "rgba": (31, 20),
        "cmyk": (29, 22),
        "sixteen": (33, 25),
        "palette": (19, 26),
    }


def test_every_mode_and_size_gives_a_palette_png_of_the_input_size(model_dir, tmp_path):
    sizes = write_images(tmp_path / "in")
    assert Image.open(tmp_path / "in" / "sixteen.png").mode.startswith("I;16")
    report = predict["main"](
        [
            "--model",
            str(model_dir),
            "--images",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--num_workers",
            "1",
            "--cpu",
        ]
    )
    assert (report["written"], report["failed"]) == (len(sizes), {})
    for name, size in sizes.items():
        mask = Image.open(tmp_path / "out" / "masks" / f"{name}.png")
        assert mask.mode == "P" and mask.size == size, name
        assert mask.getpalette()[:63] == voc_palette()[:63]
        assert np.array(mask).max() <= 20
        assert Image.open(tmp_path / "out" / "overlays" / f"{name}.jpg").size == size
    # the mask is segment()'s segmentation of the file
    model = AgenModel.from_pretrained(model_dir)
    expected = segment(
        model,
        Image.open(tmp_path / "in" / "rgba.png"),
        AgenImageProcessor.from_pretrained(model_dir),
    )
    assert np.array_equal(np.array(Image.open(tmp_path / "out" / "masks" / "rgba.png")), expected)


def test_a_bad_file_is_reported_and_the_others_go_on(model_dir, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    noise = np.random.default_rng(0).integers(0, 256, (16, 24, 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / "good.png")
    (folder / "broken.jpg").write_bytes(b"not an image" * 30)
    data = (folder / "good.png").read_bytes()
    (folder / "cut.png").write_bytes(data[: len(data) // 2])  # truncated
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "recipes" / "predict.py"),
            "--model",
            str(model_dir),
            "--images",
            str(folder),
            str(folder / "gone.jpg"),
            "--out",
            str(tmp_path / "out"),
            "--num_workers",
            "0",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 3  # INCOMPLETE_EXIT: finished, the good masks kept
    assert "finished with problems (exit 3): 3 image(s) failed" in proc.stdout
    assert f"FAILED {folder / 'broken.jpg'}" in proc.stderr
    assert f"FAILED {folder / 'gone.jpg'}: file not found" in proc.stderr
    report = json.loads((tmp_path / "out" / "predict_report.json").read_text())
    assert report["written"] == 1
    assert report["mixed_precision"] == "no"
    assert report["images_per_second"] == pytest.approx(1 / report["seconds"])
    assert sorted(report["failed"]) == sorted(
        str(folder / n) for n in ("broken.jpg", "cut.png", "gone.jpg")
    )
    assert (tmp_path / "out" / "masks" / "good.png").is_file()
    assert not list((tmp_path / "out").rglob(".tmp-*"))


def test_voc_server_layout_and_resume(model_dir, tmp_path):
    folder = tmp_path / "JPEGImages"
    folder.mkdir()
    for sid in ("2008_000001", "2008_000002"):
        Image.fromarray(np.full((30, 40, 3), 90, np.uint8)).save(folder / f"{sid}.jpg")
    out = tmp_path / "out"
    args = [
        "--model",
        str(model_dir),
        "--images",
        str(folder),
        "--out",
        str(out),
        "--num_workers",
        "0",
        "--cpu",
        "--voc_layout",
        "--no_overlays",
    ]
    predict["main"](args)
    server = out / "results" / "VOC2012" / "Segmentation" / "comp6_test_cls"
    assert sorted(p.name for p in server.iterdir()) == ["2008_000001.png", "2008_000002.png"]
    with tarfile.open(out / "results.tar.gz") as tar:
        assert "results/VOC2012/Segmentation/comp6_test_cls/2008_000002.png" in tar.getnames()
    assert not (out / "overlays").exists()
    (out / "masks" / "2008_000001.png").unlink()
    assert predict["main"](args + ["--skip_existing"])["written"] == 1


def test_two_inputs_with_one_name_are_refused(model_dir, tmp_path):
    for d in ("a", "b"):
        (tmp_path / d).mkdir()
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / d / "x.png")
    with pytest.raises(SystemExit, match="a/x.png and .*b/x.png would both be written as x.png"):
        predict["main"](
            [
                "--model",
                str(model_dir),
                "--images",
                str(tmp_path / "a"),
                str(tmp_path / "b"),
                "--out",
                str(tmp_path / "o"),
                "--cpu",
            ]
        )


def test_crf_post_processing_keeps_the_predicted_classes(model_dir, tmp_path):
    pytest.importorskip("pydensecrf.densecrf")
    folder = tmp_path / "in"
    folder.mkdir()
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "a.png")
    args = ["--model", str(model_dir), "--images", str(folder), "--num_workers", "0", "--cpu"]
    predict["main"](args + ["--out", str(tmp_path / "plain")])
    predict["main"](args + ["--out", str(tmp_path / "crf"), "--crf", "--crf_processes", "0"])
    plain = np.array(Image.open(tmp_path / "plain" / "masks" / "a.png"))
    refined = np.array(Image.open(tmp_path / "crf" / "masks" / "a.png"))
    assert refined.shape == plain.shape
    assert set(np.unique(refined)) <= set(np.unique(plain)) | {0}


def test_a_photo_taken_sideways_is_segmented_upright(model_dir, tmp_path):
    """EXIF orientation 6 (rotate 90 clockwise to display): the pixels stored
    30 wide x 20 high are shown 20 x 30; the mask and the processor see the upright image."""
    rng = np.random.default_rng(1)
    stored = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "in").mkdir()
    Image.fromarray(stored).save(tmp_path / "in" / "phone.jpg", exif=exif, quality=95)
    Image.fromarray(stored).save(tmp_path / "in" / "plain.jpg", quality=95)
    report = predict["main"](
        [
            "--model",
            str(model_dir),
            "--images",
            str(tmp_path / "in"),
            "--out",
            str(tmp_path / "out"),
            "--num_workers",
            "0",
            "--cpu",
        ]
    )
    assert (report["written"], report["failed"]) == (2, {})
    assert Image.open(tmp_path / "out" / "masks" / "phone.png").size == (20, 30)
    assert Image.open(tmp_path / "out" / "masks" / "plain.png").size == (30, 20)  # no EXIF
    from agen_hf.image_processing import rgb_array

    with (
        Image.open(tmp_path / "in" / "phone.jpg") as img,
        Image.open(tmp_path / "in" / "plain.jpg") as plain,
    ):
        upright = rgb_array(img)
        assert upright.shape == (30, 20, 3)
        # orientation 6 displays the stored pixels turned 90 degrees clockwise
        assert np.array_equal(upright, np.rot90(np.array(plain.convert("RGB")), k=-1))
        inputs = AgenImageProcessor()(img)
        assert inputs["pixel_values"].shape[-2:] == (32, 24)

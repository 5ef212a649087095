"""Files written whole or not at all (agen_hf.atomic)."""

import numpy as np
import pytest
from PIL import Image

from agen_hf.atomic import atomic_path, save_image_atomic, write_text_atomic


def test_text_replaces_the_old_file_and_creates_the_folder(tmp_path):
    path = tmp_path / "a" / "b" / "results.json"
    write_text_atomic(path, "old")
    write_text_atomic(path, "new")
    assert path.read_text() == "new"
    assert sorted(p.name for p in path.parent.iterdir()) == ["results.json"]


def test_a_writer_that_fails_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    path.write_text("last good")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_path(path) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("disk full")
    assert path.read_text() == "last good"
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]


def test_the_temporary_is_beside_the_file_and_hidden(tmp_path):
    with atomic_path(tmp_path / "x.png") as tmp:
        assert tmp.parent == tmp_path and tmp.name.startswith(".tmp-") and not tmp.exists()
        tmp.write_bytes(b"")


def test_an_image_is_saved_in_the_format_of_its_suffix(tmp_path):
    pixels = np.arange(12, dtype=np.uint8).reshape(3, 4)
    save_image_atomic(Image.fromarray(pixels), tmp_path / "mask.png")
    with Image.open(tmp_path / "mask.png") as png:
        assert png.format == "PNG" and np.array_equal(np.asarray(png), pixels)
    save_image_atomic(Image.fromarray(pixels).convert("RGB"), tmp_path / "photo.JPG", quality=90)
    with Image.open(tmp_path / "photo.JPG") as jpeg:
        assert jpeg.format == "JPEG"

from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision import tv_tensors

from agen_hf.data import load_voc
from agen_hf.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    collate,
    eval_transform,
    train_transform,
    with_transforms,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data"
BLOCK = 16


def coordinate_pair(h=144, w=208):
    """Image colour encodes the 16x16 block (bx, by); the mask encodes a function of it."""
    ys, xs = np.mgrid[0:h, 0:w]
    bx, by = xs // BLOCK, ys // BLOCK
    image = np.stack([bx * 18 + 5, by * 25 + 5, np.full_like(bx, 128)], -1).astype(np.uint8)
    mask = ((bx * 3 + by) % 20 + 1).astype(np.uint8)
    return image, mask


def decode_blocks(pixel_values):
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    rgb = (pixel_values * std + mean) * 255
    bx = torch.round((rgb[0] - 5) / 18).long()
    by = torch.round((rgb[1] - 5) / 25).long()
    return (bx * 3 + by) % 20 + 1


def run(transform, image, mask):
    return transform(
        tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1)),
        tv_tensors.Mask(torch.from_numpy(mask)),
    )


def test_train_transform_keeps_image_and_mask_aligned():
    image, mask = coordinate_pair()
    transform = train_transform(crop_size=161, scale_range=(161, 241))
    flips = set()
    torch.manual_seed(0)
    for _ in range(12):
        pv, m = run(transform, image, mask)
        assert pv.shape == (3, 161, 161) and m.shape == (161, 161) and m.dtype == torch.uint8
        m = m.long()
        # block interiors: the mask is constant in a 5x5 window there
        windows = torch.nn.functional.unfold(m[None, None].float(), 5, padding=2)[0]
        interior = (windows == m.flatten()[None].float()).all(0).view(161, 161) & (m != 255)
        assert interior.float().mean() > 0.2
        assert torch.equal(decode_blocks(pv)[interior], m[interior])
        row = pv[0, 80]
        flips.add(bool(row[10] > row[150]))  # red grows with x unless flipped
    assert flips == {True, False}


def test_train_transform_pads_image_with_mean_and_mask_with_255():
    image, mask = coordinate_pair(60, 80)
    pv, m = run(train_transform(crop_size=121, scale_range=(80, 80)), image, mask)
    padded = m == 255
    assert padded.float().mean() > 0.5  # 80x60 inside 121x121
    assert pv[:, padded].abs().max() < 0.02  # the mean colour normalises to about 0


def test_eval_transform_keeps_size():
    image, mask = coordinate_pair(50, 70)
    pv, m = run(eval_transform(), image, mask)
    assert pv.shape == (3, 50, 70) and torch.equal(m.long(), torch.from_numpy(mask).long())


def test_collate_pads_different_sizes():
    samples = [
        {
            "id": "x",
            "pixel_values": torch.ones(3, 4, 6),
            "mask": torch.zeros(4, 6).long(),
            "labels": torch.ones(20),
        },
        {
            "id": "y",
            "pixel_values": torch.ones(3, 5, 3),
            "mask": torch.ones(5, 3).long(),
            "labels": torch.zeros(20),
        },
        {"id": "bad", "pixel_values": None, "mask": None, "labels": torch.zeros(20)},
    ]
    batch = collate(samples)
    assert batch["pixel_values"].shape == (2, 3, 5, 6) and batch["ids"] == ["x", "y"]
    assert batch["sizes"].tolist() == [[4, 6], [5, 3]]
    assert batch["valid"][0].sum() == 24 and batch["valid"][1].sum() == 15
    assert (batch["mask"][0][4] == 255).all() and (batch["mask"][1][:, 3:] == 255).all()
    assert batch["pixel_values"][1, :, :, 3:].abs().sum() == 0
    assert collate([samples[2]]) is None


def test_synthetic_through_the_training_transform(tmp_path):
    from agen_hf.data import make_synthetic

    ds = with_transforms(
        make_synthetic(4, image_size=64, cache_dir=tmp_path),
        train_transform(crop_size=56, scale_range=(56, 80)),
    )
    batch = collate([ds[i] for i in range(4)])
    assert batch["pixel_values"].shape == (4, 3, 56, 56) and batch["labels"].shape == (4, 20)


@pytest.mark.skipif(not (SHARED / "voc_sample").is_dir(), reason="../shared/data not present")
def test_real_voc_masks_survive_the_transforms(tmp_path):
    ds = load_voc(SHARED / "voc_sample", "val", cache_dir=tmp_path)
    torch.manual_seed(0)
    for split_ds in (with_transforms(ds, train_transform()), with_transforms(ds, eval_transform())):
        for i in range(len(ds)):
            sample = split_ds[i]
            original = np.unique(np.array(ds[i]["mask"]))
            values = set(sample["mask"].unique().tolist())
            assert values <= set(original.tolist()) | {255}
            assert 255 in values  # the VOC boundary band is kept (or padding was added)
            hot = [float(c in ds[i]["labels"]) for c in range(20)]  # multi-hot of eq. 11
            assert sample["labels"].tolist() == hot


def test_decompression_bombs_and_late_truncation_are_bad_samples(tmp_path, monkeypatch):
    """An image over PIL's pixel limit and a PNG cut short (its header reads, its
    pixels do not) are DataErrors naming the file; with skip_bad_samples, skipped samples that
    the training sampler replaces by the next good one, keeping its augmentation seed."""
    import datasets
    from PIL import Image

    from agen_hf.data import DataError
    from agen_hf.data.decoding import decode_image
    from agen_hf.engine.sampling import SeededSamples

    paths = []
    for i, size in enumerate([(40, 30), (40, 30), (400, 300)]):
        paths.append(tmp_path / f"img{i}.png")
        Image.fromarray(np.full((size[1], size[0], 3), 60 * i, np.uint8)).save(paths[-1])
    data = paths[1].read_bytes()
    paths[1].write_bytes(data[: len(data) // 2])
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # img2 (120,000 px) > 2x the limit
    with pytest.raises(DataError, match=r"img2.png: refused as a decompression bomb"):
        decode_image(str(paths[2]))
    with pytest.raises(DataError, match=r"img1.png: truncated or corrupt image"):
        decode_image(str(paths[1]))
    ds = datasets.Dataset.from_dict(
        {
            "id": ["img0", "img1", "img2"],
            "image": [{"path": str(p), "bytes": None} for p in paths],
            "mask": [None] * 3,
            "labels": [[0]] * 3,
        },
        features=datasets.Features(
            {
                "id": datasets.Value("string"),
                "image": datasets.Image(),
                "mask": datasets.Image(),
                "labels": datasets.Sequence(datasets.ClassLabel(names=["background", "thing"])),
            }
        ),
    )
    transformed = with_transforms(ds, eval_transform(), skip_bad_samples=True)
    samples = SeededSamples(transformed, seed=0)
    good = samples[0]
    assert "replaced" not in good
    for bad in (1, 2):  # each replaced by the next good one in index order: img0
        substitute = samples[bad]
        assert substitute["replaced"] == f"img{bad}" and substitute["id"] == "img0"
        assert torch.equal(substitute["pixel_values"], good["pixel_values"])
    assert collate([samples[0], samples[1]])["replaced"] == ["img1"]

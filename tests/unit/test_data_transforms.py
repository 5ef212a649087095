from pathlib import Path

import datasets
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


def v2_reference(crop_size, scale_range, mean=IMAGENET_MEAN, std=IMAGENET_STD):
    """The paper's augmentation written as torchvision's v2 composition: the slow, obvious
    form that :class:`TrainAugmentation` must equal sample for sample."""
    from torchvision.transforms import v2
    from torchvision.transforms.v2 import functional as TF

    class LongSide(v2.Transform):
        def make_params(self, flat_inputs):
            return {"long_side": int(torch.randint(scale_range[0], scale_range[1] + 1, ()))}

        def transform(self, inpt, params):
            return self._call_kernel(
                TF.resize, inpt, size=None, max_size=params["long_side"], antialias=True
            )

    fill = {tv_tensors.Image: tuple(round(255 * m) for m in mean), tv_tensors.Mask: 255}
    return v2.Compose(
        [
            LongSide(),
            v2.RandomCrop(crop_size, pad_if_needed=True, fill=fill),
            v2.RandomHorizontalFlip(),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize(mean, std),
        ]
    )


@pytest.mark.parametrize(
    "size, crop, scale",
    [
        ((144, 208), 161, (161, 241)),
        ((60, 80), 121, (80, 80)),
        ((64, 64), 64, (64, 64)),
        ((30, 200), 56, (40, 90)),
        ((300, 50), 96, (100, 140)),
    ],
)
def test_train_augmentation_equals_torchvision_v2_composition(size, crop, scale):
    """The same random draws in the same order, the same kernels: equal images, masks and
    generator states after every sample (upscaled, downscaled, padded, cropped, flipped)."""
    image, mask = coordinate_pair(*size)
    image, mask = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(mask)
    ours, theirs = train_transform(crop, scale), v2_reference(crop, scale)
    for seed in range(10):
        torch.manual_seed(seed)
        pv, m = ours(image, mask)
        state = torch.get_rng_state()
        torch.manual_seed(seed)
        ref_pv, ref_m = theirs(tv_tensors.Image(image), tv_tensors.Mask(mask))
        assert torch.equal(pv, ref_pv.as_subclass(torch.Tensor))
        assert torch.equal(m, ref_m.as_subclass(torch.Tensor)) and m.dtype == torch.uint8
        assert torch.equal(state, torch.get_rng_state())
    with pytest.raises(ValueError, match="scale_range: need 0 < min <= max"):
        train_transform(64, (80, 60))


def test_eval_transform_equals_torchvision_v2_normalisation():
    from torchvision.transforms import v2

    image = torch.randint(0, 256, (3, 37, 53), dtype=torch.uint8)
    mask = torch.randint(0, 21, (37, 53), dtype=torch.uint8)
    reference = v2.Compose(
        [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    pv, m = eval_transform()(image, mask)
    assert torch.equal(pv, reference(image)) and torch.equal(m, mask)


def test_held_decoded_samples_are_the_same_and_decoded_once(tmp_path, monkeypatch):
    """hold_decoded keeps each decoded sample: the same samples at the same seeds, one decode a
    sample over several epochs, a bad sample's problem held (logged once) like a good one."""
    from PIL import Image

    from agen_hf.data import make_synthetic, transforms
    from agen_hf.engine.sampling import SeededSamples

    ds = make_synthetic(6, image_size=48, cache_dir=tmp_path)
    bad = tmp_path / "bad.png"
    Image.fromarray(np.zeros((48, 48, 3), np.uint8)).save(bad)
    bad.write_bytes(bad.read_bytes()[:60])
    ds = ds.cast_column("image", datasets.Image(decode=False))
    ds = ds.map(
        lambda row, i: {"image": {"path": str(bad), "bytes": None} if i == 4 else row["image"]},
        with_indices=True,
        features=ds.features,
    )
    decodes = []
    real_decode = transforms.decode_sample
    monkeypatch.setattr(
        transforms, "decode_sample", lambda *a: decodes.append(a) or real_decode(*a)
    )
    augmentation = train_transform(40, (40, 56))
    lazy = SeededSamples(with_transforms(ds, augmentation, skip_bad_samples=True), seed=3)
    held_ds = with_transforms(ds, augmentation, skip_bad_samples=True, hold_decoded=True)
    held = SeededSamples(held_ds, seed=3)
    for virtual in range(18):  # 3 epochs of 6 samples
        a, b = lazy[virtual], held[virtual]
        assert a["id"] == b["id"] and a.get("replaced") == b.get("replaced")
        assert torch.equal(a["pixel_values"], b["pixel_values"])
        assert torch.equal(a["mask"], b["mask"]) and torch.equal(a["labels"], b["labels"])
    assert held[4]["replaced"] == "synthetic-0-4"
    lazy_decodes = 18 + 3  # every read, and the bad sample's substitute on each of 3 epochs
    assert len(decodes) == lazy_decodes + 6  # the held dataset decoded each sample once
    assert held_ds.skipped == 1 and len(held_ds.held) == 6

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from agen_hf import (
    AgenConfig,
    AgenImageProcessor,
    AgenModel,
    AgenOutput,
    BatchFeature,
    segment,
    segmentation_probabilities,
)
from agen_hf.image_processing import rgb_array, upsample_argmax


class PixelModel(nn.Module):
    """A stand-in for AgenModel's inference path: ``segmentation_only`` logits from one conv.
    With a horizontally symmetric kernel it is flip-equivariant by construction; zero padding
    of the conv and zero padding of the image agree, so padding does not break that."""

    def __init__(self, kernel: int, symmetric: bool, classes: int = 4) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, classes, kernel, padding=kernel // 2)
        with torch.no_grad():
            w = torch.randn_like(self.conv.weight)
            self.conv.weight.copy_((w + w.flip(-1)) / 2 if symmetric else w)
        self.seen = []

    def forward(self, pixel_values, segmentation_only=False):
        self.seen.append(tuple(pixel_values.shape))
        return AgenOutput(logits=self.conv(pixel_values))


def test_every_image_mode_becomes_8bit_rgb():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (7, 9, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (7, 9), dtype=np.uint8)
    assert np.array_equal(rgb_array(Image.fromarray(rgb)), rgb)
    assert np.array_equal(rgb_array(Image.fromarray(gray)), np.stack([gray] * 3, -1))
    rgba = np.concatenate([rgb, np.zeros((7, 9, 1), np.uint8)], -1)
    assert np.array_equal(rgb_array(Image.fromarray(rgba, "RGBA")), rgb)  # alpha dropped
    sixteen = gray.astype(np.uint16) * 257
    assert np.array_equal(rgb_array(Image.fromarray(sixteen)), np.stack([gray] * 3, -1))
    assert Image.fromarray(sixteen).mode.startswith("I;16")
    assert np.array_equal(
        rgb_array(Image.fromarray(sixteen.astype(np.int32))), np.stack([gray] * 3, -1)
    )  # mode "I"
    floats = Image.fromarray(gray.astype(np.float32) / 255)
    assert np.array_equal(rgb_array(floats)[..., 0], gray)
    cmyk = Image.fromarray(rgb).convert("CMYK")
    assert np.abs(rgb_array(cmyk).astype(int) - rgb).max() <= 1
    for mode in ("P", "1", "LA", "YCbCr"):
        out = rgb_array(Image.fromarray(rgb).convert(mode))
        assert out.shape == (7, 9, 3) and out.dtype == np.uint8
    assert np.array_equal(rgb_array(torch.from_numpy(rgb).permute(2, 0, 1)), rgb)
    assert np.array_equal(rgb_array(sixteen[..., None]), np.stack([gray] * 3, -1))


def test_bad_images_are_clear_errors():
    with pytest.raises(ValueError, match="photo.png: float pixels must lie in"):
        rgb_array(np.full((4, 4, 3), 2.0), "photo.png")
    with pytest.raises(ValueError, match="x: expected .* got shape \\(4, 4, 5\\)"):
        rgb_array(np.zeros((4, 4, 5), np.uint8), "x")
    with pytest.raises(ValueError, match="unsupported pixel type int8"):
        rgb_array(np.zeros((4, 4), np.int8))
    model = PixelModel(1, symmetric=True)
    for scales in ((1.0, 0.0), ()):
        with pytest.raises(ValueError, match="scales: need one or more positive scales"):
            segmentation_probabilities(model, torch.zeros(1, 3, 8, 8), scales=scales)
        with pytest.raises(ValueError, match="scales: need one or more positive scales"):
            segment(model, np.zeros((8, 8, 3), np.uint8), AgenImageProcessor(), scales=scales)
    assert model.seen == []  # refused before running the model


def test_preprocess_pads_to_the_output_stride_and_shrinks_large_images():
    proc = AgenImageProcessor(max_size=64)
    small = np.full((10, 13, 3), 124, np.uint8)
    large = np.zeros((300, 200, 3), np.uint8)
    out = proc.preprocess([small, large])
    assert isinstance(out, BatchFeature) and list(out) == ["pixel_values"]
    assert out["pixel_values"].shape == (2, 3, 64, 48)  # 64 x 43 rounded up to 8
    assert out["pixel_values"].dtype == torch.float32
    # normalisation, and zero (the mean colour) in the padding
    expected = (124 / 255 - proc.image_mean[0]) / proc.image_std[0]
    assert torch.allclose(out["pixel_values"][0, 0, :10, :13], torch.tensor(expected))
    assert (out["pixel_values"][0, :, 10:, :] == 0).all()
    assert (out["pixel_values"][0, :, :, 13:] == 0).all()
    black = -torch.tensor(proc.image_mean) / torch.tensor(proc.image_std)
    assert torch.allclose(
        out["pixel_values"][1, :, :64, :43], black.view(3, 1, 1).expand(3, 64, 43)
    )
    assert (out["pixel_values"][1, :, :, 43:] == 0).all()
    # one image is a batch of one; __call__ is preprocess
    assert torch.equal(proc(small)["pixel_values"], out["pixel_values"][:1, :, :16, :16])


def test_batch_feature_is_a_dict_with_attributes_and_to():
    proc = AgenImageProcessor()
    inputs = proc(np.zeros((9, 10, 3), np.uint8), return_tensors="pt")
    assert isinstance(inputs, dict) and inputs.pixel_values is inputs["pixel_values"]
    with pytest.raises(AttributeError, match="no 'labels'"):
        inputs.labels
    doubled = inputs.to(torch.float64)
    assert isinstance(doubled, BatchFeature) and doubled is not inputs
    assert doubled.pixel_values.dtype == torch.float64
    assert inputs.pixel_values.dtype == torch.float32  # the original is unchanged
    assert torch.equal(doubled.pixel_values.float(), inputs.pixel_values)
    mixed = BatchFeature(pixel_values=inputs.pixel_values, ids=torch.arange(3), name="x")
    cast = mixed.to(torch.float16)
    assert cast.ids.dtype == torch.int64 and cast.name == "x"  # only floats take the dtype
    assert cast.pixel_values.dtype == torch.float16
    moved = mixed.to("cpu")
    assert isinstance(moved, BatchFeature) and moved.pixel_values.device.type == "cpu"
    assert set(moved) == {"pixel_values", "ids", "name"}
    assert mixed.to(torch.device("meta")).pixel_values.device.type == "meta"


def test_return_tensors_np_gives_numpy_and_others_are_errors():
    proc = AgenImageProcessor()
    images = [np.full((9, 10, 3), 50, np.uint8), np.full((17, 4, 3), 200, np.uint8)]
    arrays = proc(images, return_tensors="np")
    assert isinstance(arrays, BatchFeature) and list(arrays) == ["pixel_values"]
    assert isinstance(arrays.pixel_values, np.ndarray)
    assert arrays.pixel_values.dtype == np.float32 and arrays.pixel_values.shape == (2, 3, 24, 16)
    assert np.array_equal(arrays.pixel_values, proc(images).pixel_values.numpy())
    for bad in ("tf", "jax", None):
        with pytest.raises(ValueError, match=f"return_tensors: .*got {bad!r}"):
            proc.preprocess(images, return_tensors=bad)


def test_the_model_runs_on_the_processor_output():
    model = AgenModel(AgenConfig.tiny()).eval()
    proc = AgenImageProcessor()
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)),
        Image.fromarray(rng.integers(0, 256, (20, 60, 3), dtype=np.uint8)),
    ]
    inputs = proc(images, return_tensors="pt")
    assert inputs.pixel_values.shape == (2, 3, 40, 64)
    with torch.no_grad():
        outputs = model(**inputs)
    assert outputs.logits.shape == (2, 21, 5, 8)
    labels = proc.post_process_semantic_segmentation(
        outputs, target_sizes=[im.size[::-1] for im in images]
    )
    assert [tuple(m.shape) for m in labels] == [(37, 45), (20, 60)]
    assert all(m.dtype == torch.int64 for m in labels)


def test_upsample_argmax_in_chunks_equals_all_classes_at_once():
    probs = torch.rand(7, 5, 6)
    probs[3] = probs[2]  # a tie goes to the lower index
    full = F.interpolate(probs[None], size=(23, 17), mode="bilinear", align_corners=False)
    expected = full[0].argmax(0)
    for limit in (1, 23 * 17 * 2, 1 << 30):
        assert torch.equal(upsample_argmax(probs, (23, 17), max_elements=limit), expected)


def test_flip_of_a_flip_equivariant_model_equals_no_flip():
    x = torch.randn(1, 3, 13, 21)  # odd sizes: the image is padded to 16 x 24
    model = PixelModel(3, symmetric=True)
    single = segmentation_probabilities(model, x)
    flipped = segmentation_probabilities(model, x, flip=True)
    assert single.shape == (1, 4, 13, 21)
    assert torch.allclose(single, flipped, atol=1e-6)
    # the check can fail: without the symmetry the flipped pass differs
    model = PixelModel(3, symmetric=False)
    a = segmentation_probabilities(model, x)
    b = segmentation_probabilities(model, x, flip=True)
    assert (a - b).abs().max() > 1e-3


def test_multi_scale_and_flip_equal_single_scale_on_an_equivariant_model():
    # a pixel-wise model is equivariant to flips and to rescaling of a uniform image
    model = PixelModel(1, symmetric=True)
    x = torch.randn(1, 3, 1, 1).expand(1, 3, 19, 26).contiguous()
    single = segmentation_probabilities(model, x)
    multi = segmentation_probabilities(model, x, scales=(0.5, 0.75, 1.0, 1.5, 2.0), flip=True)
    assert torch.allclose(multi, single, atol=1e-6)
    sizes = sorted({s[-2:] for s in model.seen})
    assert (40, 56) in sizes and (16, 16) in sizes  # 38 x 52 and 10 x 13, padded to 8


def slow_multi_scale(model, x, scales, flip):
    """Multi-scale + flip written out pass by pass."""
    h, w = x.shape[-2:]
    total, passes = 0, 0
    for s in scales:
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        xs = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False)
        for flipped in [False, True] if flip else [False]:
            inp = xs.flip(-1) if flipped else xs
            hp, wp = -(-hs // 8) * 8, -(-ws // 8) * 8
            padded = torch.zeros(1, 3, hp, wp)
            padded[..., :hs, :ws] = inp
            logits = model(padded, segmentation_only=True).logits
            logits = F.interpolate(logits, size=(hp, wp), mode="bilinear", align_corners=False)[
                ..., :hs, :ws
            ]
            if flipped:
                logits = logits.flip(-1)
            probs = logits.softmax(1)
            total = total + F.interpolate(probs, size=(h, w), mode="bilinear", align_corners=False)
            passes += 1
    return total / passes


def test_multi_scale_flip_of_agen_equals_the_pass_by_pass_reference():
    model = AgenModel(AgenConfig.tiny()).eval()
    x = torch.randn(1, 3, 37, 45)
    scales = (0.5, 1.0, 1.5)
    with torch.no_grad():
        expected = slow_multi_scale(model, x, scales, True)
    got = segmentation_probabilities(model, x, scales, flip=True)
    assert got.shape == (1, 21, 37, 45)
    assert torch.allclose(got.sum(1), torch.ones(1, 37, 45), atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-5)


def test_segment_returns_maps_at_the_original_size():
    model = PixelModel(3, symmetric=True)
    proc = AgenImageProcessor(max_size=32)
    rng = np.random.default_rng(1)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((10, 10), (90, 120))
    ]
    one = segment(model, images[1], proc)
    both = segment(model, images, proc)
    assert one.shape == (90, 120) and one.dtype == np.uint8
    assert [m.shape for m in both] == [(10, 10), (90, 120)]
    assert np.array_equal(both[1], one)
    assert model.seen[0][-2:] == (24, 32)  # 90 x 120 shrunk to 24 x 32 for the network
    # the processor defaults to the model config's normalisation
    agen = AgenModel(AgenConfig.tiny(image_mean=(0.5, 0.5, 0.5))).eval()
    own = AgenImageProcessor(image_mean=(0.5, 0.5, 0.5), image_std=agen.config.image_std)
    assert np.array_equal(segment(agen, images[1]), segment(agen, images[1], own))
    assert not np.array_equal(
        segment(agen, images[1]), segment(agen, images[1], AgenImageProcessor())
    )


def test_post_process_with_target_sizes_equals_segment():
    """Each image alone through a stride-8 AgenModel (the logits are upsampled), then a batch
    of a pixel-wise model, whose content logits do not depend on the batch's padding."""
    proc = AgenImageProcessor(max_size=48)
    rng = np.random.default_rng(2)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        for h, w in ((37, 29), (90, 120), (13, 46))
    ]  # 90 x 120 is shrunk to 36 x 48
    model = AgenModel(AgenConfig.tiny()).eval()
    for image in images:
        with torch.no_grad():
            outputs = model(**proc(image))
        (labels,) = proc.post_process_semantic_segmentation(
            outputs, target_sizes=[image.size[::-1]]
        )
        assert labels.shape == image.size[::-1] and labels.dtype == torch.int64
        expected = segment(model, image, proc)
        assert len(np.unique(expected)) > 1
        assert np.array_equal(labels.numpy(), expected)

    pixel = PixelModel(3, symmetric=False)
    labels = proc.post_process_semantic_segmentation(
        pixel(**proc(images)), target_sizes=[im.size[::-1] for im in images]
    )
    assert pixel.seen == [(3, 3, 40, 48)]  # one batch, padded to the largest content
    for got, image in zip(labels, images):
        assert np.array_equal(got.numpy(), segment(pixel, image, proc))

    # a tensor of probabilities is taken as it is: multi-scale + flip, as segment does it
    inputs = proc(images[1])
    probs = segmentation_probabilities(model, inputs.pixel_values, (0.5, 1.0), flip=True)
    (labels,) = proc.post_process_semantic_segmentation(probs, target_sizes=[(90, 120)])
    assert np.array_equal(
        labels.numpy(), segment(model, images[1], proc, scales=(0.5, 1.0), flip=True)
    )


def test_post_process_without_target_sizes_is_the_argmax_at_the_logits_resolution():
    model = AgenModel(AgenConfig.tiny()).eval()
    inputs = AgenImageProcessor()(
        [np.zeros((37, 45, 3), np.uint8), np.full((20, 60, 3), 255, np.uint8)]
    )
    with torch.no_grad():
        outputs = model(**inputs)
    proc = AgenImageProcessor()
    labels = proc.post_process_semantic_segmentation(outputs)
    assert [tuple(m.shape) for m in labels] == [(5, 8), (5, 8)]
    assert torch.equal(torch.stack(labels), outputs.logits.argmax(dim=1))
    assert torch.equal(
        torch.stack(proc.post_process_semantic_segmentation(outputs.logits.softmax(dim=1))),
        outputs.logits.argmax(dim=1),
    )


def test_post_process_refuses_a_wrong_number_of_target_sizes_and_bad_scores():
    proc = AgenImageProcessor()
    logits = torch.zeros(2, 21, 5, 8)
    for sizes in ([(37, 45)], [(37, 45)] * 3):
        with pytest.raises(
            ValueError, match=f"target_sizes: {len(sizes)} sizes for a batch of 2 images"
        ):
            proc.post_process_semantic_segmentation(AgenOutput(logits=logits), sizes)
    with pytest.raises(ValueError, match="expected scores \\(B, K, h, w\\)"):
        proc.post_process_semantic_segmentation(logits[0], [(37, 45)])
    with pytest.raises(ValueError, match="model output with .logits"):
        proc.post_process_semantic_segmentation(AgenOutput(), [(37, 45)] * 2)


def test_segment_with_a_crf_keeps_the_order_and_the_predicted_classes():
    pytest.importorskip("pydensecrf.densecrf")
    from agen_hf.crf import CrfParams, CrfPool

    model = AgenModel(AgenConfig.tiny()).eval()
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((30, 20), (17, 41))]
    plain = segment(model, images)
    with CrfPool(CrfParams(iterations=3), processes=0) as crf:
        refined = segment(model, images, crf=crf)
        one = segment(model, images[1], crf=crf)
    assert [m.shape for m in refined] == [(30, 20), (17, 41)]
    assert all(m.dtype == np.uint8 for m in refined)
    assert np.array_equal(refined[1], one)
    for r, p in zip(refined, plain):
        assert set(np.unique(r)) <= set(np.unique(p)) | {0}


def test_processor_config_travels_with_the_model(tmp_path):
    AgenModel(AgenConfig.tiny(image_mean=(0.5, 0.5, 0.5))).save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "AgenImageProcessor"
    assert set(saved) == {
        "image_processor_type",
        "image_mean",
        "image_std",
        "max_size",
        "size_divisor",
    }
    proc = AgenImageProcessor.from_pretrained(tmp_path / "m", max_size=64)
    assert proc.image_mean == (0.5, 0.5, 0.5) and proc.max_size == 64
    (tmp_path / "m" / "preprocessor_config.json").unlink()  # falls back to config.json
    assert AgenImageProcessor.from_pretrained(tmp_path / "m").image_mean == (0.5, 0.5, 0.5)
    proc = AgenImageProcessor(size_divisor=16, max_size=None)
    proc.save_pretrained(tmp_path / "p")
    assert AgenImageProcessor.from_pretrained(tmp_path / "p") == proc
    (tmp_path / "p" / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json: cannot read it as JSON"):
        AgenImageProcessor.from_pretrained(tmp_path / "p")


def test_an_older_preprocessor_config_with_scales_and_flip_still_loads(tmp_path):
    """Files written before test-time augmentation moved to agen_hf.inference."""
    (tmp_path / "preprocessor_config.json").write_text(
        json.dumps(
            {
                "image_processor_type": "AgenImageProcessor",
                "image_mean": [0.5, 0.4, 0.3],
                "image_std": [0.2, 0.25, 0.3],
                "max_size": 512,
                "size_divisor": 8,
                "scales": [0.5, 1.0, 1.5],
                "flip": True,
            }
        )
    )
    proc = AgenImageProcessor.from_pretrained(tmp_path)
    assert proc == AgenImageProcessor(
        image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3), max_size=512
    )
    assert not hasattr(proc, "scales") and not hasattr(proc, "flip")


def test_unnormalize_inverts_normalize():
    proc = AgenImageProcessor(image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3))
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    back = proc.unnormalize(proc.normalize(rgb)[None])[0].permute(1, 2, 0)
    assert torch.allclose(back, torch.from_numpy(rgb).float(), atol=1e-3)

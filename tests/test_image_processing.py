import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.nn import functional as F

from agen_hf import AgenConfig, AgenImageProcessor, AgenModel, AgenOutput
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
    sixteen = (gray.astype(np.uint16) * 257)
    assert np.array_equal(rgb_array(Image.fromarray(sixteen)), np.stack([gray] * 3, -1))
    assert Image.fromarray(sixteen).mode.startswith("I;16")
    assert np.array_equal(rgb_array(Image.fromarray(sixteen.astype(np.int32))),
                          np.stack([gray] * 3, -1))  # mode "I"
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
    with pytest.raises(ValueError, match="scales"):
        AgenImageProcessor(scales=(1.0, 0.0))


def test_preprocess_pads_to_the_output_stride_and_shrinks_large_images():
    proc = AgenImageProcessor(max_size=64)
    small = np.full((10, 13, 3), 124, np.uint8)
    large = np.zeros((300, 200, 3), np.uint8)
    out = proc.preprocess([small, large])
    assert out["pixel_values"].shape == (2, 3, 64, 48)  # 64 x 43 rounded up to 8
    assert out["input_sizes"] == [(10, 13), (64, 43)]
    assert out["original_sizes"] == [(10, 13), (300, 200)]
    # normalisation, and zero (the mean colour) in the padding
    expected = (124 / 255 - proc.image_mean[0]) / proc.image_std[0]
    assert torch.allclose(out["pixel_values"][0, 0, :10, :13], torch.tensor(expected))
    assert (out["pixel_values"][0, :, 10:, :] == 0).all()


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
    single = AgenImageProcessor().predict_probabilities(model, x)
    flipped = AgenImageProcessor(flip=True).predict_probabilities(model, x)
    assert single.shape == (1, 4, 13, 21)
    assert torch.allclose(single, flipped, atol=1e-6)
    # the check can fail: without the symmetry the flipped pass differs
    model = PixelModel(3, symmetric=False)
    a = AgenImageProcessor().predict_probabilities(model, x)
    b = AgenImageProcessor(flip=True).predict_probabilities(model, x)
    assert (a - b).abs().max() > 1e-3


def test_multi_scale_and_flip_equal_single_scale_on_an_equivariant_model():
    # a pixel-wise model is equivariant to flips and to rescaling of a uniform image
    model = PixelModel(1, symmetric=True)
    x = torch.randn(1, 3, 1, 1).expand(1, 3, 19, 26).contiguous()
    single = AgenImageProcessor().predict_probabilities(model, x)
    multi = AgenImageProcessor(scales=(0.5, 0.75, 1.0, 1.5, 2.0), flip=True)
    assert torch.allclose(multi.predict_probabilities(model, x), single, atol=1e-6)
    sizes = sorted({s[-2:] for s in model.seen})
    assert (40, 56) in sizes and (16, 16) in sizes  # 38 x 52 and 10 x 13, padded to 8


def slow_multi_scale(model, x, scales, flip):
    """Multi-scale + flip written out pass by pass."""
    h, w = x.shape[-2:]
    total, passes = 0, 0
    for s in scales:
        hs, ws = max(1, round(h * s)), max(1, round(w * s))
        xs = F.interpolate(x, size=(hs, ws), mode="bilinear", align_corners=False)
        for flipped in ([False, True] if flip else [False]):
            inp = xs.flip(-1) if flipped else xs
            hp, wp = -(-hs // 8) * 8, -(-ws // 8) * 8
            padded = torch.zeros(1, 3, hp, wp)
            padded[..., :hs, :ws] = inp
            logits = model(padded, segmentation_only=True).logits
            logits = F.interpolate(logits, size=(hp, wp), mode="bilinear",
                                   align_corners=False)[..., :hs, :ws]
            if flipped:
                logits = logits.flip(-1)
            probs = logits.softmax(1)
            total = total + F.interpolate(probs, size=(h, w), mode="bilinear",
                                          align_corners=False)
            passes += 1
    return total / passes


def test_multi_scale_flip_of_agen_equals_the_pass_by_pass_reference():
    model = AgenModel(AgenConfig.tiny()).eval()
    x = torch.randn(1, 3, 37, 45)
    proc = AgenImageProcessor(scales=(0.5, 1.0, 1.5), flip=True)
    with torch.no_grad():
        expected = slow_multi_scale(model, x, proc.scales, True)
    got = proc.predict_probabilities(model, x)
    assert got.shape == (1, 21, 37, 45)
    assert torch.allclose(got.sum(1), torch.ones(1, 37, 45), atol=1e-5)
    assert torch.allclose(got, expected, atol=1e-5)


def test_segment_returns_maps_at_the_original_size():
    model = PixelModel(3, symmetric=True)
    proc = AgenImageProcessor(max_size=32)
    rng = np.random.default_rng(1)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((10, 10), (90, 120))]
    one = proc.segment(model, images[1])
    both = proc.segment(model, images)
    assert one.shape == (90, 120) and one.dtype == np.uint8
    assert [m.shape for m in both] == [(10, 10), (90, 120)]
    assert np.array_equal(both[1], one)
    assert model.seen[0][-2:] == (24, 32)  # 90 x 120 shrunk to 24 x 32 for the network


def test_processor_config_travels_with_the_model(tmp_path):
    AgenModel(AgenConfig.tiny(image_mean=(0.5, 0.5, 0.5))).save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "preprocessor_config.json").read_text())
    assert saved["image_processor_type"] == "AgenImageProcessor"
    proc = AgenImageProcessor.from_pretrained(tmp_path / "m", flip=True)
    assert proc.image_mean == (0.5, 0.5, 0.5) and proc.flip
    (tmp_path / "m" / "preprocessor_config.json").unlink()  # falls back to config.json
    assert AgenImageProcessor.from_pretrained(tmp_path / "m").image_mean == (0.5, 0.5, 0.5)
    proc = AgenImageProcessor(scales=(0.5, 1.0), max_size=None)
    proc.save_pretrained(tmp_path / "p")
    assert AgenImageProcessor.from_pretrained(tmp_path / "p") == proc
    (tmp_path / "p" / "preprocessor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="preprocessor_config.json: cannot read it as JSON"):
        AgenImageProcessor.from_pretrained(tmp_path / "p")


def test_unnormalize_inverts_normalize():
    proc = AgenImageProcessor(image_mean=(0.5, 0.4, 0.3), image_std=(0.2, 0.25, 0.3))
    rgb = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    back = proc.unnormalize(proc.normalize(rgb)[None])[0].permute(1, 2, 0)
    assert torch.allclose(back, torch.from_numpy(rgb).float(), atol=1e-3)

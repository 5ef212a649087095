"""The floors job's smoke check (run by ``.ci/floors`` in a venv holding the oldest declared
versions of every dependency, ``.ci/floors.txt``): not collected by the default ``pytest`` run.

Imports every ``agen_hf`` module, runs the training transform (torchvision's v2 kernels,
``resize_mask`` with ``max_size`` among them: torchvision >= 0.21), one forward + backward of a
tiny ``AgenModel``, a ``save_pretrained``/``from_pretrained`` round trip (``PyTorchModelHubMixin``
with ``paper_url=``: huggingface-hub >= 0.30) and ``evaluate.load`` of the bundled mean IoU
offline. Prints each step; exits non-zero (an exception) on any failure."""

from __future__ import annotations

import importlib
import os
import pkgutil
import sys
import tempfile
import time
from importlib import metadata

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_EVALUATE_OFFLINE", "1")

DISTRIBUTIONS = (
    "torch",
    "torchvision",
    "accelerate",
    "datasets",
    "safetensors",
    "huggingface-hub",
    "evaluate",
    "numpy",
    "pillow",
    "pyyaml",
    "pydensecrf2",
    "tensorboard",
    "pytest",
    "pyarrow",
    "fsspec",
    "pandas",
)

_T0 = time.perf_counter()


def step(msg: str) -> None:
    print(f"[floors_check {time.perf_counter() - _T0:6.1f}s] {msg}", flush=True)


def versions() -> None:
    for name in DISTRIBUTIONS:
        try:
            v = metadata.version(name)
        except metadata.PackageNotFoundError:
            v = "(not installed)"
        print(f"    {name:<16} {v}")
    print(f"    {'python':<16} {sys.version.split()[0]}")


def import_everything() -> None:
    import agen_hf

    names = ["agen_hf"] + [m.name for m in pkgutil.walk_packages(agen_hf.__path__, "agen_hf.")]
    for name in names:
        importlib.import_module(name)
    step(f"imported {len(names)} agen_hf modules: {', '.join(names)}")


def check_transforms() -> None:
    import torch

    from agen_hf.data.transforms import train_transform

    lo, hi = 40, 56
    image = torch.randint(0, 256, (3, 30, 20), dtype=torch.uint8)
    mask = torch.randint(0, 21, (30, 20), dtype=torch.uint8)
    transform = train_transform(crop_size=64, scale_range=(lo, hi))
    for _ in range(5):
        pixel_values, out_mask = transform(image, mask)
        inside = (out_mask != 255).nonzero()
        h, w = (inside.max(0).values - inside.min(0).values + 1).tolist()
        assert lo <= max(h, w) <= hi, f"long side {max(h, w)} outside [{lo}, {hi}]"
        assert abs(h / w - 30 / 20) < 0.1, f"aspect ratio changed: {h}x{w}"
    assert pixel_values.shape == (3, 64, 64) and pixel_values.dtype == torch.float32, (
        pixel_values.shape,
        pixel_values.dtype,
    )
    assert out_mask.shape == (64, 64) and out_mask.dtype == torch.uint8
    step(
        f"train_transform: long side resized into [{lo}, {hi}] (last {h}x{w}), padded and "
        f"cropped -> {tuple(pixel_values.shape)}"
    )


def check_model() -> None:
    import numpy as np
    import torch

    from agen_hf import AgenConfig, AgenModel

    torch.manual_seed(0)
    model = AgenModel(AgenConfig.tiny())
    pixel_values = torch.randn(2, 3, 64, 64)
    labels = torch.zeros(2, 20)
    labels[0, 3] = 1
    labels[1, [5, 11]] = 1
    out = model(pixel_values, labels)
    assert torch.isfinite(out.loss), out.loss
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None and g.abs().sum() > 0 for g in grads), "no gradient"
    step(
        f"AgenModel(AgenConfig.tiny()) [boundary_crf={model.config.boundary_crf}]: forward + "
        f"backward, loss {out.loss.item():.4f}, logits {tuple(out.logits.shape)}"
    )

    model.eval()
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp)
        files = sorted(os.listdir(tmp))
        assert "model.safetensors" in files and "config.json" in files, files
        loaded = AgenModel.from_pretrained(tmp)
        with torch.no_grad():
            a, b = model(pixel_values).logits, loaded(pixel_values).logits
        torch.testing.assert_close(a, b)
        step(f"save_pretrained/from_pretrained round trip ({', '.join(files)}): same logits")

        # a 16-bit grayscale PNG (Pillow < 10.3 opens it as mode "I", later as "I;16")
        from PIL import Image

        from agen_hf import AgenImageProcessor, segment

        path = os.path.join(tmp, "sixteen.png")
        Image.fromarray(
            np.random.default_rng(0).integers(0, 65535, (25, 33), dtype=np.uint16)
        ).save(path)
        image = Image.open(path)
        seg = segment(loaded, image, AgenImageProcessor.from_pretrained(tmp))
        assert seg.shape == (25, 33) and seg.dtype == np.uint8 and seg.max() <= 20, seg.shape
        step(f"segment() of a 16-bit PNG (PIL mode {image.mode}): {seg.shape} class map")


def check_offline_dataset() -> None:
    from agen_hf.data import load_voc

    try:
        load_voc("someone/voc2012-not-cached", "train")
    except FileNotFoundError as e:
        assert "VOCtrainval_11-May-2012.tar" in str(e), e
    else:
        raise AssertionError("load_voc of an uncached Hub id offline did not fail")
    step("load_voc(<uncached Hub id>) offline: FileNotFoundError saying what to download")


def check_metric() -> None:
    import evaluate
    import numpy as np

    from agen_hf.metrics import MEAN_IOU

    metric = evaluate.load(MEAN_IOU)
    ref = np.array([[0, 1], [1, 255]], dtype=np.uint16)
    pred = np.array([[0, 1], [0, 1]], dtype=np.uint16)
    result = metric.compute(predictions=[pred], references=[ref], num_labels=2, ignore_index=255)
    assert abs(result["mean_iou"] - (0.5 + 0.5) / 2) < 1e-6, result
    step(f"evaluate.load(MEAN_IOU) offline: mean_iou {result['mean_iou']:.3f}")


def main() -> None:
    step("installed versions:")
    versions()
    import_everything()
    check_transforms()
    check_model()
    check_offline_dataset()
    check_metric()
    step("OK")


if __name__ == "__main__":
    main()

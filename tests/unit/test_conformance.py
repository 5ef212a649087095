"""One contract for every model class (transformers' ``ModelTesterMixin`` way): built small,
each is saved and loaded back to the same weights and outputs, returns the shared output type
(``out[0]``, ``out.logits``, ``out["logits"]``), reports its ``device`` / ``dtype``, loads for
another label set through ``from_pretrained``'s overrides, and saves the image processor that
prepares its inputs."""

import pytest
import torch

from agen_hf import AgenConfig, AgenImageProcessor, AgenModel
from agen_hf.auto import load_segmentation_model
from agen_hf.deeplab import DeepLabConfig, DeepLabModel

SMALL = {
    "agen": lambda: AgenModel(AgenConfig.tiny(boundary_crf="torch")),
    "deeplab-vgg16": lambda: DeepLabModel(
        DeepLabConfig(
            backbone="vgg16",
            head="largefov",
            fc_channels=16,
            vgg_channels=[8, 8, 16, 16, 16],
            vgg_depths=[1, 1, 1, 1, 1],
        )
    ),
    "deeplab-resnet": lambda: DeepLabModel(
        DeepLabConfig(backbone="resnet101", resnet_layers=(1, 1, 1, 1))
    ),
}


@pytest.fixture(params=sorted(SMALL))
def model(request):
    torch.manual_seed(0)
    return SMALL[request.param]().eval()


def segment(model, x):
    return model(x, segmentation_only=True)


def test_save_and_load_give_the_same_weights_and_outputs(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    names = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"} <= names
    for loaded in (
        type(model).from_pretrained(tmp_path / "m"),
        load_segmentation_model(tmp_path / "m"),
    ):
        assert type(loaded) is type(model) and loaded.config == model.config
        state = model.state_dict()
        assert all(torch.equal(v, state[k]) for k, v in loaded.state_dict().items())
        x = torch.randn(1, 3, 40, 40)
        assert torch.equal(segment(loaded, x).logits, segment(model, x).logits)


def test_the_output_contract(model):
    x = torch.randn(2, 3, 40, 40)
    out = segment(model, x)
    assert out[0] is out.logits and out["logits"] is out.logits and out.to_tuple()[0] is out.logits
    assert out.logits.shape[:2] == (2, model.config.num_labels)
    masks = torch.zeros(2, 40, 40, dtype=torch.long)
    trained = model.train()(x, masks=masks, segmentation_only=True)
    assert trained[0] is trained.loss and trained.loss.ndim == 0 and trained.loss_terms
    trained.loss.backward()


def test_device_and_dtype(model):
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.to(torch.bfloat16).dtype == torch.bfloat16


def test_from_pretrained_takes_another_label_set(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="ignore_mismatched_sizes"):
        type(model).from_pretrained(tmp_path / "m", num_labels=5)
    five = type(model).from_pretrained(tmp_path / "m", num_labels=5, ignore_mismatched_sizes=True)
    assert five.config.num_labels == 5 and five.config.id2label[4] == "LABEL_4"
    assert segment(five.eval(), torch.randn(1, 3, 40, 40)).logits.shape[1] == 5


def test_the_processor_round_trip(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    processor = AgenImageProcessor.from_pretrained(tmp_path / "m")
    assert list(processor.image_mean) == list(model.config.image_mean)
    assert list(processor.image_std) == list(model.config.image_std)
    processor.save_pretrained(tmp_path / "p")
    again = AgenImageProcessor.from_pretrained(tmp_path / "p")
    assert again.to_dict() == processor.to_dict()

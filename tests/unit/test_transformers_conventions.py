"""The conventions a transformers user reaches for first."""

import json

import pytest
import torch

from agen_hf import AgenConfig, AgenModel
from agen_hf.deeplab import DeepLabConfig, DeepLabModel


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return AgenModel(AgenConfig.tiny(boundary_crf="torch"))


def test_outputs_index_like_a_model_output(model):
    x = torch.randn(2, 3, 48, 48)
    out = model.eval()(x)
    assert out[0] is out.logits and out["logits"] is out.logits  # no targets: logits first
    assert out.keys()[:2] == ["logits", "class_logits"] and "loss" not in out
    assert out.to_tuple() == tuple(getattr(out, k) for k in out.keys()) and len(out) == 5
    with pytest.raises(KeyError, match="'loss' is not set in this AgenOutput"):
        out["loss"]
    labels = torch.zeros(2, 20)
    labels[0, 3] = labels[1, 7] = 1
    out = model.train()(x, labels)
    loss, terms, logits = out[:3]  # transformers' return_dict=False order: loss first
    assert loss is out.loss and terms is out.loss_terms and logits is out.logits
    assert dict(out.items())["seeds"] is out.seeds and list(out) == out.keys()


def test_deeplab_outputs_too():
    model = DeepLabModel(
        DeepLabConfig(
            backbone="vgg16",
            head="largefov",
            fc_channels=16,
            vgg_channels=[8, 8, 16, 16, 16],
            vgg_depths=[1, 1, 1, 1, 1],
        )
    ).eval()
    out = model(torch.randn(1, 3, 40, 40))
    assert out[0] is out.logits and out.to_tuple() == (out.logits,)


def test_device_and_dtype(model):
    assert model.device == torch.device("cpu") and model.dtype == torch.float32
    assert model.to(torch.bfloat16).dtype == torch.bfloat16
    model.float()


def test_from_pretrained_overrides_the_classes(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="ignore_mismatched_sizes|classes"):
        AgenModel.from_pretrained(tmp_path / "m", num_labels=5)
    five = AgenModel.from_pretrained(tmp_path / "m", num_labels=5, ignore_mismatched_sizes=True)
    assert five.config.num_labels == 5 and five.config.id2label[4] == "LABEL_4"
    assert five.branch_b.head[-1].out_channels == 5
    kept = dict(model.state_dict())
    assert torch.equal(
        five.state_dict()["stem.conv1.conv1_1.weight"], kept["stem.conv1.conv1_1.weight"]
    )  # everything else is kept
    named = AgenModel.from_pretrained(
        tmp_path / "m", id2label={"0": "background", "1": "cat"}, ignore_mismatched_sizes=True
    )
    assert named.config.id2label == {0: "background", 1: "cat"}
    same = AgenModel.from_pretrained(tmp_path / "m", id2label=model.config.id2label)
    assert all(torch.equal(v, kept[k]) for k, v in same.state_dict().items())
    with pytest.raises(ValueError, match="num_labels=3 but id2label names 2"):
        AgenModel.from_pretrained(tmp_path / "m", num_labels=3, id2label={0: "bg", 1: "cat"})


def test_from_pretrained_errors_name_the_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "other").mkdir()
    with pytest.raises(
        FileNotFoundError,
        match=r"runs/missing: no such model folder "
        r"\(runs/ holds \['other'\]\)",
    ):
        AgenModel.from_pretrained("runs/missing")
    with pytest.raises(FileNotFoundError, match="runs/other/config.json: missing"):
        AgenModel.from_pretrained("runs/other")
    (tmp_path / "runs" / "other" / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"runs/other/config.json: not valid JSON"):
        AgenModel.from_pretrained("runs/other")
    with pytest.raises(FileNotFoundError, match=r"\./x: no such model folder"):
        AgenModel.from_pretrained("./x")


def test_configs_share_one_base_and_save_their_model_type(tmp_path):
    from agen_hf.auto import load_segmentation_model
    from agen_hf.configuration_utils import model_type_of

    config = AgenConfig.tiny(num_labels=3, id2label={0: "background", 1: "a", 2: "b"})
    path = config.save_pretrained(tmp_path / "agen")
    assert json.loads(path.read_text())["model_type"] == "agen"
    assert AgenConfig.from_pretrained(tmp_path / "agen") == config
    deeplab = DeepLabConfig(backbone="vgg16", fc_channels=16)
    assert DeepLabConfig.from_dict(deeplab.to_dict()) == deeplab
    assert deeplab.to_dict()["model_type"] == "deeplab"
    with pytest.raises(ValueError, match="model_type 'agen': not a DeepLabConfig"):
        DeepLabConfig.from_pretrained(tmp_path / "agen")
    with pytest.raises(ValueError, match="unknown DeepLabConfig field.*: backbon$"):
        DeepLabConfig.from_dict({"backbon": "vgg16"})
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="bad.json: expected a JSON object, got list"):
        AgenConfig.from_json_file(tmp_path / "bad.json")
    # every saved model folder names its type; loading picks the class by it
    AgenModel(config).save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert (
        saved["model_type"] == "agen"
        and type(load_segmentation_model(tmp_path / "model")) is AgenModel
    )
    assert model_type_of({"backbone": "vgg16"}) == "deeplab"  # folders saved before types
    assert model_type_of({"num_labels": 21}) == "agen"
    saved["model_type"] = "segformer"
    (tmp_path / "model" / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="model_type 'segformer' is not one of"):
        load_segmentation_model(tmp_path / "model")


# --- one flag vocabulary across the recipes ------------------------------------------------

ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]
INFERENCE_RECIPES = {
    "eval_voc": ["--dataset", "synthetic"],
    "predict": ["--images", "a.jpg", "--out", "o"],
    "make_pseudo_labels": ["--train_dir", "photos", "--out", "o"],
    "visualize": ["--images", "a.jpg"],
}


def recipe_module(name):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"recipe_{name}", ROOT / "recipes" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parsed(parser, argv) -> dict:
    """Every flag's value the recipe's parser gives for ``argv``."""
    from agen_hf.arguments import flag_values

    return flag_values(*parser.parse(argv))


@pytest.mark.parametrize("name", sorted(INFERENCE_RECIPES))
def test_inference_recipes_share_the_training_vocabulary(name):
    parser = recipe_module(name).build_parser()
    rest = INFERENCE_RECIPES[name]
    old = parsed(parser, ["--model", "runs/m", *rest])
    new = parsed(parser, ["--model_name_or_path", "runs/m", *rest])
    assert old["model_name_or_path"] == new["model_name_or_path"] == "runs/m"
    assert old == new
    if "--out" in rest:  # the old name is an alias of --output_dir
        renamed = [a if a != "--out" else "--output_dir" for a in rest]
        assert parsed(parser, ["--model", "m", *renamed])["output_dir"] == old["output_dir"] == "o"
    assert old["scales"] == [1.0] and old["flip"] is False
    with pytest.raises(SystemExit):  # one validation of --scales for every recipe
        parser.parse(["--model", "m", *rest, "--scales", "1", "0"])
    assert "(default: [1.0])" in parser.format_help()


@pytest.mark.parametrize(
    "name", ["eval_voc", "predict", "make_pseudo_labels", "train_voc", "train_deeplab", "visualize"]
)
def test_every_recipe_shows_its_defaults_in_help(name):
    text = recipe_module(name).build_parser().format_help()
    assert "(default:" in text


def test_checkpointing_steps_epoch_and_report_to_none():
    train_voc = recipe_module("train_voc")
    training = train_voc.parse_args(
        ["--checkpointing_steps", "epoch", "--with_tracking", "--report_to", "none"]
    ).training
    assert training.checkpointing_steps == 0 and training.with_tracking is False
    assert train_voc.parse_args(["--checkpointing_steps", "25"]).training.checkpointing_steps == 25
    with pytest.raises(SystemExit):
        train_voc.parse_args(["--checkpointing_steps", "epochs"])


def test_loop_options_take_each_flag_by_name():
    from agen_hf.engine.loop import LoopOptions

    training = (
        recipe_module("train_voc")
        .parse_args(
            [
                "--max_train_steps",
                "7",
                "--checkpointing_steps",
                "3",
                "--checkpoints_total_limit",
                "2",
                "--eval_every_epochs",
                "4",
                "--logging_steps",
                "5",
                "--max_nonfinite_steps",
                "6",
                "--max_grad_norm",
                "1.5",
                "--channels_last",
                "--output_dir",
                "runs/x",
            ]
        )
        .training
    )
    o = LoopOptions.from_training(training, steps_per_epoch=3)
    assert (
        o.max_steps,
        o.steps_per_epoch,
        o.checkpointing_steps,
        o.checkpoints_total_limit,
        o.eval_every_epochs,
        o.logging_steps,
        o.max_nonfinite_steps,
        o.max_grad_norm,
        o.channels_last,
        o.with_tracking,
        str(o.output_dir),
    ) == (7, 3, 3, 2, 4, 5, 6, 1.5, True, False, "runs/x")


def test_pixel_maps_passed_as_labels_point_to_masks(model):
    x = torch.randn(2, 3, 48, 48)
    with pytest.raises(ValueError, match=r"pixel label maps go in masks="):
        model.train()(x, torch.zeros(2, 48, 48, dtype=torch.long))

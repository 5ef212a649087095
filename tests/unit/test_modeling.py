import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agen_hf import AgenConfig, AgenModel
from agen_hf.cam import class_scores

README = Path(__file__).resolve().parents[2] / "README.md"

# The rows of Tables 1-3: (agm_stages, coam_stages)
TABLE_ROWS = {
    "baseline": ((), ()),
    "OA (AGM-4)": ((4,), ()),
    "SC (AGM-4 + CoAM-4)": ((4,), (4,)),
    "AGM-3": ((3,), ()),
    "AGM-5": ((5,), ()),
    "AGM-3/4": ((3, 4), ()),
    "AGM-3/5": ((3, 5), ()),
    "AGM-4/5": ((4, 5), ()),
    "MA (AGM-3/4/5)": ((3, 4, 5), ()),
    "MA + CoAM-5": ((3, 4, 5), (5,)),
    "MA + CoAM-5/4": ((3, 4, 5), (4, 5)),
    "AC (AGM-3/4/5 + CoAM-3/4/5)": ((3, 4, 5), (3, 4, 5)),
}


def batch(b=2, size=64, classes=20):
    pixel_values = torch.randn(b, 3, size, size)
    labels = torch.zeros(b, classes)
    labels[0, 3] = 1
    labels[-1, [5, 11]] = 1
    return pixel_values, labels


@pytest.mark.parametrize("row", list(TABLE_ROWS))
def test_every_table_row_trains_every_parameter(row):
    agm, coam = TABLE_ROWS[row]
    model = AgenModel(AgenConfig.tiny(agm_stages=agm, coam_stages=coam, boundary_crf="torch"))
    for m in model.coam.values():  # lambda = 0 would hide the attention branch's gradients
        torch.nn.init.constant_(m.weight, 0.5)
    pixel_values, labels = batch()
    out = model(pixel_values, labels)
    heads = ["A"] + [f"agm{n}" for n in sorted(agm, reverse=True)]
    expected = (
        {f"cls_{h}" for h in heads}
        | {"seg_B", "boundary"}
        | {f"seg_{h}" for h in heads if h != "A"}
    )
    assert set(out.loss_terms) == expected
    torch.testing.assert_close(out.loss, sum(out.loss_terms.values()))
    assert out.logits.shape == (2, 21, 8, 8)
    for n in agm:
        assert out.agm_logits[f"agm{n}"].shape == (2, 21, 64, 64)
        side = 16 if n == 3 else 8  # AGM-3 sits at stride 4, AGM-4/5 at stride 8
        assert out.class_maps[f"agm{n}"].shape == (2, 20, side, side)
    assert set(out.class_maps_before_coam) == {f"agm{n}" for n in coam}
    assert out.seeds["A"].shape == (2, 64, 64)
    out.loss.backward()
    no_grad = [
        n
        for n, p in model.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all() or p.grad.abs().sum() == 0
    ]
    assert no_grad == []


def test_coam_is_accumulated_top_down():
    model = AgenModel(AgenConfig.tiny())
    for n, m in model.coam.items():
        torch.nn.init.constant_(m.weight, 0.1 * int(n))
    out = model(batch()[0])
    maps, before = out.class_maps, out.class_maps_before_coam
    torch.testing.assert_close(maps["agm5"], model.coam["5"](before["agm5"], maps["A"]))
    torch.testing.assert_close(maps["agm4"], model.coam["4"](before["agm4"], maps["agm5"]))
    torch.testing.assert_close(maps["agm3"], model.coam["3"](before["agm3"], maps["agm4"]))
    for name in ("A", "agm5", "agm4", "agm3"):
        torch.testing.assert_close(out.class_logits[name], maps[name].mean(dim=(2, 3)))


def test_single_coam_attends_to_branch_a():
    model = AgenModel(AgenConfig.tiny(agm_stages=(4,), coam_stages=(4,)))
    torch.nn.init.constant_(model.coam["4"].weight, 0.3)
    out = model(batch()[0])
    torch.testing.assert_close(
        out.class_maps["agm4"],
        model.coam["4"](out.class_maps_before_coam["agm4"], out.class_maps["A"]),
    )


def test_losses_follow_the_config():
    model = AgenModel(AgenConfig.tiny(use_boundary_loss=False))
    out = model(*batch())
    assert "boundary" not in out.loss_terms and len(out.loss_terms) == 8
    assert model(batch()[0]).loss is None


def test_pydensecrf_boundary_loss_in_the_model():
    pytest.importorskip("pydensecrf.densecrf")
    model = AgenModel(AgenConfig.tiny(boundary_crf="pydensecrf"))
    out = model(*batch())
    assert torch.isfinite(out.loss_terms["boundary"]) and out.loss_terms["boundary"] > 0


def test_inference_path_is_branch_b_alone():
    model = AgenModel(AgenConfig.tiny()).eval()
    pixel_values = batch(size=70)[0]
    fast = model(pixel_values, segmentation_only=True)
    full = model(pixel_values)
    assert fast.class_maps == {} and fast.loss is None
    assert fast.logits.shape == (2, 21, 9, 9)
    torch.testing.assert_close(fast.logits, full.logits)


def test_bad_inputs_are_clear_errors():
    model = AgenModel(AgenConfig.tiny())
    with pytest.raises(ValueError, match="labels"):
        model(torch.randn(2, 3, 64, 64), torch.zeros(2, 21))
    with pytest.raises(ValueError, match="pixel_values"):
        model(torch.randn(2, 64, 64))
    with pytest.raises(TypeError, match="config"):
        AgenModel({"num_labels": 21})


def test_parameter_groups_split_pretrained_from_new():
    model = AgenModel(AgenConfig.tiny())
    groups = model.parameter_groups()
    names = {id(p): n for n, p in model.named_parameters()}
    backbone = {names[id(p)] for p in groups["backbone"]}
    new = {names[id(p)] for p in groups["new"]}
    assert backbone.isdisjoint(new) and backbone | new == set(names.values())
    assert (
        "stem.conv1.conv1_1.weight" in backbone and "branch_b.b4.conv_branch2a.weight" in backbone
    )
    assert "branch_a.fc6.weight" in new and "branch_b.head.0.weight" in new
    assert "coam.3.weight" in new and "agm.cls_shared.1.weight" in new


def test_save_and_load_round_trip(tmp_path):
    config = AgenConfig.tiny(agm_stages=(3, 4), coam_stages=(4,), cam_alpha=5.0)
    model = AgenModel(config).eval()
    torch.nn.init.constant_(model.coam["4"].weight, 0.25)
    model.save_pretrained(tmp_path)
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == [
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]  # nothing pickled
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["agm_stages"] == [3, 4] and saved["cam_alpha"] == 5.0
    assert set(load_file(tmp_path / "model.safetensors")) == set(model.state_dict())
    loaded = AgenModel.from_pretrained(tmp_path)
    assert loaded.config == config and not loaded.training
    pixel_values = batch()[0]
    with torch.no_grad():
        a, b = model(pixel_values), loaded(pixel_values)
    assert torch.equal(a.logits, b.logits)
    for k in a.class_maps:
        assert torch.equal(a.class_maps[k], b.class_maps[k])


def test_loading_weights_of_another_architecture_fails(tmp_path):
    AgenModel(AgenConfig.tiny(agm_stages=(4,), coam_stages=())).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["agm_stages"] = [3, 4]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(RuntimeError, match="agm"):
        AgenModel.from_pretrained(tmp_path)


def test_push_to_hub_uploads_weights_config_and_card(tmp_path, monkeypatch):
    from huggingface_hub import HfApi, RepoUrl

    uploaded = {}

    def fake_create_repo(self, repo_id, **kwargs):
        return RepoUrl(f"https://huggingface.co/{repo_id}")

    def fake_upload_folder(self, *, repo_id, folder_path, **kwargs):
        uploaded["repo_id"] = repo_id
        uploaded["files"] = {
            p.name: p.read_text() if p.suffix in (".md", ".json") else None
            for p in Path(folder_path).iterdir()
        }
        return "https://huggingface.co/commit/1"

    monkeypatch.setattr(HfApi, "create_repo", fake_create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", fake_upload_folder)
    AgenModel(AgenConfig.tiny()).push_to_hub("someone/agen-tiny", token="hf_fake")
    assert uploaded["repo_id"] == "someone/agen-tiny"
    assert set(uploaded["files"]) == {
        "README.md",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    }
    card = uploaded["files"]["README.md"]
    assert "library_name: agen_hf" in card and "weakly-supervised-segmentation" in card
    assert "## Evaluation" in card and "No evaluation results recorded yet." in card


def test_paper_config_builds_and_readme_states_its_size(capsys):
    model = AgenModel(AgenConfig())
    count = sum(p.numel() for p in model.parameters())
    print(f"AGEN paper config: {count:,} parameters")
    stated = re.search(r"paper-size model has ([\d,]+) parameters", README.read_text())
    assert stated and int(stated.group(1).replace(",", "")) == count
    assert model.branch_a.classifier.weight.shape == (20, 1024, 1, 1)
    assert model.branch_b.head[2].weight.shape == (21, 512, 1, 1)
    assert model.branch_b.b7.conv_branch2b2.weight.shape == (4096, 2048, 1, 1)


def test_frozen_batch_norm_keeps_imagenet_statistics():
    model = AgenModel(AgenConfig.tiny(freeze_batch_norm=True)).train()
    bn = model.branch_b.b3.bn_branch2a
    before = bn.running_mean.clone()
    out = model(*batch())
    out.loss.backward()
    assert not bn.training and torch.equal(bn.running_mean, before)
    assert bn.weight.grad is None and not bn.weight.requires_grad
    assert model.stem.training and model.branch_a.training
    assert AgenConfig().freeze_batch_norm and not AgenConfig.tiny().freeze_batch_norm


def test_classification_only_is_eq_11_alone_and_matches_the_full_pass():
    model = AgenModel(AgenConfig.tiny(boundary_crf="torch"))
    for m in model.coam.values():
        torch.nn.init.constant_(m.weight, 0.5)
    pixel_values, labels = batch()
    full = model(pixel_values, labels)
    cls = model(pixel_values, labels, classification_only=True)
    assert set(cls.loss_terms) == {"cls_A", "cls_agm5", "cls_agm4", "cls_agm3"}
    assert cls.logits is None and cls.agm_logits == {} and cls.seeds == {}
    for name, value in cls.loss_terms.items():  # the same numbers as in the full pass
        torch.testing.assert_close(value, full.loss_terms[name])
    torch.testing.assert_close(cls.loss, sum(full.loss_terms[k] for k in cls.loss_terms))
    cls.loss.backward()
    trained = {n for n, p in model.named_parameters() if p.grad is not None}
    assert not any(n.startswith(("branch_b.", "agm.seg_")) for n in trained)
    assert {
        n
        for n, _ in model.named_parameters()
        if n.startswith(("stem.", "branch_a.", "agm.cls_", "coam."))
    } <= trained
    with pytest.raises(ValueError, match="exclude each other"):
        model(pixel_values, segmentation_only=True, classification_only=True)


def test_classifier_bias_starts_at_zero_and_round_trips(tmp_path):
    model = AgenModel(AgenConfig.tiny(classifier_bias=True))
    assert model.branch_a.classifier.bias is not None
    assert model.agm.cls_shared[-1].bias is not None
    assert model.branch_a.classifier.bias.abs().sum() == 0  # GAP(F_c) starts near 0
    assert AgenModel(AgenConfig.tiny()).branch_a.classifier.bias is None  # the default
    model.save_pretrained(tmp_path)
    back = AgenModel.from_pretrained(tmp_path)
    assert back.config.classifier_bias
    torch.testing.assert_close(back.agm.cls_shared[-1].bias, model.agm.cls_shared[-1].bias)


def test_lse_pooling_scores_every_head_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model = AgenModel(AgenConfig.tiny(lse_pooling_r=5.0))
    pixel_values, labels = batch()
    out = model(pixel_values, labels=labels)
    for name, maps in out.class_maps.items():
        torch.testing.assert_close(out.class_logits[name], class_scores(maps, 5.0))
        assert not torch.allclose(out.class_logits[name], maps.mean(dim=(2, 3)))
    out.loss.backward()
    assert model.branch_a.classifier.weight.grad.abs().sum() > 0
    model.save_pretrained(tmp_path)
    back = AgenModel.from_pretrained(tmp_path)
    assert back.config.lse_pooling_r == 5.0
    assert AgenConfig.tiny().lse_pooling_r == 0  # the paper's GAP is the default


def test_a_run_recorded_before_lse_pooling_keeps_its_fingerprint():
    # runs recorded before the field had GAP: their fingerprints lack it, and still resume
    assert "lse_pooling_r" not in AgenConfig.tiny().run_dict()
    assert AgenConfig.tiny(lse_pooling_r=5.0).run_dict()["lse_pooling_r"] == 5.0


def test_weights_saved_by_a_wrapped_training_model_load(tmp_path):
    """A checkpoint-<step> of a DDP or torch.compile run names its weights ``module.*`` /
    ``_orig_mod.*``; from_pretrained strips the wrapper's prefix and still loads strictly."""
    from safetensors.torch import save_file

    model = AgenModel(AgenConfig.tiny())
    model.save_model_config(tmp_path)
    state = {f"module._orig_mod.{k}": v.clone() for k, v in model.state_dict().items()}
    save_file(state, tmp_path / "model.safetensors")
    loaded = AgenModel.from_pretrained(tmp_path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in loaded.state_dict().items())
    save_file(
        {f"module.{k}": v for k, v in list(model.state_dict().items())[1:]},
        tmp_path / "model.safetensors",
    )
    with pytest.raises(RuntimeError, match="Missing key"):
        AgenModel.from_pretrained(tmp_path)


def test_model_card_has_model_index_results_names_the_repo_and_is_regenerated(
    tmp_path, monkeypatch
):
    """Evaluation results as model-index (dataset, split, mean_iou, value), the
    loading example names the folder or the pushed repo, no dead link, a folder saved again
    gets the new card."""
    from huggingface_hub import HfApi, ModelCard, RepoUrl

    from agen_hf.hub import mean_iou_result

    model = AgenModel(AgenConfig.tiny())
    model.save_pretrained(tmp_path, model_card_kwargs={"metrics": "first"})
    card = (tmp_path / "README.md").read_text()
    assert f'AgenModel.from_pretrained("{tmp_path}")' in card
    assert "REPO_ID" not in card and "github.com" not in card and "model-index" not in card
    result = mean_iou_result(0.61234567, "pascal_voc", "PASCAL VOC 2012", "val")
    model.save_pretrained(
        tmp_path, model_card_kwargs={"metrics": "second", "eval_results": [result]}
    )
    card = ModelCard.load(tmp_path / "README.md")
    assert "second" in card.text and "first" not in card.text
    (entry,) = card.data.eval_results
    assert (
        entry.task_type,
        entry.dataset_type,
        entry.dataset_name,
        entry.dataset_split,
        entry.metric_type,
        entry.metric_value,
    ) == ("image-segmentation", "pascal_voc", "PASCAL VOC 2012", "val", "mean_iou", 0.6123)
    assert "model-index" in (tmp_path / "README.md").read_text()

    pushed = {}
    monkeypatch.setattr(
        HfApi,
        "create_repo",
        lambda self, repo_id, **k: RepoUrl(f"https://huggingface.co/{repo_id}"),
    )
    monkeypatch.setattr(
        HfApi,
        "upload_folder",
        lambda self, *, repo_id, folder_path, **k: pushed.setdefault(
            "card", (Path(folder_path) / "README.md").read_text()
        ),
    )
    model.push_to_hub(
        "someone/agen-tiny", token="hf_fake", model_card_kwargs={"eval_results": [result]}
    )
    assert 'AgenModel.from_pretrained("someone/agen-tiny")' in pushed["card"]
    assert "name: agen-tiny" in pushed["card"]

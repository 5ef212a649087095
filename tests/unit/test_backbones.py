"""The backbone contract, parametrised over the registry: every backbone at a small input and a
reduced width or depth, its taps against the contract, the full AGEN trained on it in branch A,
in branch B and in both (AGM-3/4/5, CoAM, seeds, every loss: a gradient for every parameter),
save/load, an exact resume, bf16 autocast and channels-last, ImageNet-style weight files of its
family round-tripped, a stem-sharing pair and a pair with a stem each, and a DeepLab on it."""

import copy
import io
import math
from contextlib import redirect_stdout

import pytest
import torch
from safetensors.torch import save_file

from agen_hf import AgenConfig, AgenModel
from agen_hf.backbones import spec_of
from agen_hf.deeplab import DeepLabConfig, DeepLabModel
from agen_hf.weights import load_branch, load_deeplab_backbone

timm = pytest.importorskip("timm")  # the timm extra (in dev)

VIT = "timm:vit_small_patch16_224"
SMALL = {  # each backbone at a reduced width or depth
    "vgg16": {},  # the tiny config's vgg_* fields
    "resnet38": {},  # the tiny config's resnet_* fields
    "resnet50": {"layers": [1, 1, 1, 1], "width_per_group": 16},
    "resnet101": {"layers": [1, 1, 2, 1], "width_per_group": 16},
    "convnext_tiny": {"dims": [16, 32, 64, 128], "depths": [1, 1, 1, 1]},
    "timm:resnet18": {},
    VIT: {"depth": 3, "embed_dim": 48, "num_heads": 2},
}
NAMES = sorted(SMALL)
H, W = 64, 96  # a multiple of every output stride: taps at exactly H / stride


def config(a: str, b: str, **overrides) -> AgenConfig:
    return AgenConfig.tiny(
        branch_a=a,
        branch_b=b,
        branch_a_options=SMALL[a],
        branch_b_options=SMALL[b],
        boundary_crf="torch",
        **overrides,
    )


def batch(n: int = 2, h: int = H, w: int = W):
    g = torch.Generator().manual_seed(5)
    labels = torch.zeros(n, 20)
    labels[0, 3] = labels[-1, 11] = labels[-1, 4] = 1
    return torch.randn(n, 3, h, w, generator=g), labels


def test_the_registry_lists_what_it_builds():
    from agen_hf.backbones.__main__ import main

    text = io.StringIO()
    with redirect_stdout(text):
        main()
    listing = text.getvalue()
    for name in (
        "vgg16",
        "resnet38",
        "resnet50",
        "resnet101",
        "convnext_tiny",
        "timm:<model name>",
    ):
        assert name in listing
    assert "output stride 32" in listing and "follows the stems of vgg" in listing
    with pytest.raises(ValueError, match="backbone 'alexnet': not registered; registered: "):
        spec_of("alexnet")


@pytest.mark.parametrize("name", NAMES)
def test_the_taps_follow_the_contract(name):
    spec = spec_of(name)
    cfg = config(name, name)
    stem = spec.stem(cfg, SMALL[name])
    body = spec.body(cfg, SMALL[name], stem)
    x = torch.randn(2, 3, H, W)
    taps, features = body(stem(x))
    assert sorted(taps) == [3, 4, 5]
    for n, tap in taps.items():
        stride = body.stage_strides[n]
        assert tap.shape == (2, body.stage_channels[n], H // stride, W // stride), (n, tap.shape)
    assert features.shape == (
        2,
        body.out_channels,
        H // body.output_stride,
        W // body.output_stride,
    )
    assert body.output_stride == (spec.output_stride or body.output_stride)
    assert not list(body.parameters(recurse=False)) and not list(body.buffers(recurse=False))
    pretrained = {id(p) for m in body.pretrained_modules() for p in m.parameters()}
    assert pretrained and pretrained <= {id(p) for p in body.parameters()}


@pytest.mark.parametrize("role", ["a", "b", "both"])
@pytest.mark.parametrize("name", NAMES)
def test_the_full_agen_trains_on_it(name, role):
    a = name if role in ("a", "both") else "vgg16"
    b = name if role in ("b", "both") else "resnet38"
    torch.manual_seed(0)
    model = AgenModel(config(a, b))
    x, labels = batch()
    out = model.train()(x, labels)
    assert set(out.loss_terms) == {
        "cls_A", "cls_agm5", "cls_agm4", "cls_agm3",
        "seg_B", "seg_agm5", "seg_agm4", "seg_agm3", "boundary",
    }  # fmt: skip
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, missing
    assert out.logits.shape[-2:] == (
        H // model.branch_b.output_stride,
        W // model.branch_b.output_stride,
    )
    groups = model.parameter_groups()
    assert len(groups["backbone"]) + len(groups["new"]) == len(list(model.parameters()))
    assert model.output_stride == math.lcm(
        model.branch_a.output_stride, model.branch_b.output_stride
    )


@pytest.mark.parametrize("name", NAMES)
def test_save_load_bf16_and_channels_last(name, tmp_path):
    torch.manual_seed(0)
    model = AgenModel(config(name, name)).eval()
    model.save_pretrained(tmp_path / "m")
    saved = (tmp_path / "m" / "config.json").read_text()
    assert f'"branch_a": "{name}"' in saved and f'"branch_b": "{name}"' in saved
    assert ('"timm_version": "' in saved) == name.startswith("timm:")
    assert (
        f'"size_divisor": {model.output_stride}'
        in (tmp_path / "m" / "preprocessor_config.json").read_text()
    )
    loaded = AgenModel.from_pretrained(tmp_path / "m")
    x, _ = batch(1)
    with torch.no_grad():
        reference = model(x, segmentation_only=True).logits
        assert torch.equal(loaded(x, segmentation_only=True).logits, reference)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(x, segmentation_only=True).logits.float()
        assert torch.isfinite(half).all() and half.shape == reference.shape
        last = model.to(memory_format=torch.channels_last)(
            x.contiguous(memory_format=torch.channels_last), segmentation_only=True
        ).logits
    assert torch.allclose(last, reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_a_resume_continues_exactly(name):
    """Two SGD steps straight, against one step, the weights, optimizer and RNG saved and
    loaded into a fresh model, then the second step: the same weights, bit for bit."""

    def fresh():
        torch.manual_seed(0)
        model = AgenModel(config(name, name))
        return model, torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step(model, optimizer):
        x, labels = batch()
        optimizer.zero_grad()
        model.train()(x, labels).loss.backward()
        optimizer.step()

    model, optimizer = fresh()
    torch.manual_seed(1)
    step(model, optimizer)
    saved = (
        {k: v.clone() for k, v in model.state_dict().items()},
        copy.deepcopy(optimizer.state_dict()),  # its buffers change in place
        torch.get_rng_state(),
    )
    step(model, optimizer)
    again, again_optimizer = fresh()
    again.load_state_dict(saved[0])
    again_optimizer.load_state_dict(saved[1])
    torch.set_rng_state(saved[2])
    step(again, again_optimizer)
    straight = model.state_dict()
    assert all(torch.equal(v, straight[k]) for k, v in again.state_dict().items())


def family_file(name: str) -> dict[str, torch.Tensor]:
    """What the family publishes, at the small size: a full classification network's
    weights under the family's own names, classifier included."""
    from torchvision.models import resnet

    from agen_hf.backbones.torchvision_models import _convnext

    torch.manual_seed(7)
    if name.startswith("resnet"):
        opts = SMALL[name]
        return resnet.ResNet(
            resnet.Bottleneck, opts["layers"], width_per_group=opts["width_per_group"]
        ).state_dict()
    if name == "convnext_tiny":
        return _convnext(SMALL[name]).state_dict()
    return timm.create_model(
        name.removeprefix("timm:"), pretrained=False, **SMALL[name]
    ).state_dict()


@pytest.mark.parametrize("name", ["resnet50", "resnet101", "convnext_tiny", "timm:resnet18", VIT])
def test_weight_files_of_the_family_round_trip(name, tmp_path):
    state = family_file(name)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    model = AgenModel(config(name, name, share_stem=False))
    for branch in ("a", "b"):
        report = load_branch(model, branch, tmp_path / "w.safetensors")
        assert report.missing == [], report.missing[:5]
        assert report.unexpected and all(
            k.startswith(("fc.", "classifier.", "head", "norm.", "fc_norm"))
            for k in report.unexpected
        ), report.unexpected
        loaded = model.state_dict()
        for key in report.loaded:
            source = key.split(".", 1)[1]
            for prefix in ("net.model.", "net."):
                source = source.removeprefix(prefix)
            assert torch.equal(loaded[key], state[source]), key
    assert "tensors loaded" in str(report)


def test_a_stem_sharing_pair_and_a_pair_with_a_stem_each():
    shared = AgenModel(config("resnet50", "resnet50"))
    assert shared.config.share_stem and shared.stem_b is None
    assert not any(n.startswith("stem_b.") for n, _ in shared.named_parameters())
    apart = AgenModel(config("resnet50", "resnet50", share_stem=False))
    assert apart.stem_b is not None
    count = lambda m, prefix: sum(
        p.numel() for n, p in m.named_parameters() if n.startswith(prefix)
    )  # noqa: E731
    assert count(apart, "stem_b.") == count(apart, "stem.") > 0
    mixed = AgenModel(config("convnext_tiny", "resnet38"))
    assert mixed.config.share_stem is False and type(mixed.stem_b).__name__ == "ResNet38Stem"
    with pytest.raises(
        ValueError,
        match="share_stem: branch_b resnet38 cannot follow branch_a convnext_tiny's stem",
    ):
        config("convnext_tiny", "resnet38", share_stem=True)
    timm_pair = config("timm:resnet18", "timm:resnet18")  # a timm model keeps its stem
    assert timm_pair.share_stem is False
    with pytest.raises(ValueError, match="cannot follow branch_a timm:resnet18's stem"):
        config("timm:resnet18", "timm:resnet18", share_stem=True)
    paper = AgenConfig()
    assert (paper.branch_a, paper.branch_b, paper.share_stem) == ("vgg16", "resnet38", True)
    with pytest.raises(ValueError, match="branch_a: backbone resnet50: unknown option"):
        AgenConfig.tiny(branch_a="resnet50", branch_a_options={"colour": 1})


def test_a_run_recorded_before_the_backbone_fields_keeps_its_fingerprint():
    paper = AgenConfig.tiny().run_dict()
    assert not {"branch_a", "branch_b", "share_stem", "timm_version"} & set(paper)
    other = config("resnet50", "resnet38").run_dict()
    assert other["branch_a"] == "resnet50" and other["branch_a_options"] == SMALL["resnet50"]


@pytest.mark.parametrize("name", NAMES)
def test_a_deeplab_on_it(name):
    torch.manual_seed(0)
    model = DeepLabModel(
        DeepLabConfig(
            backbone=name,
            backbone_options=SMALL[name],
            head="aspp",
            fc_channels=16,
            vgg_channels=(8, 16, 16, 32, 32),
            vgg_depths=(1, 1, 1, 1, 1),
            resnet_layers=(1, 1, 1, 1),
        )
    )
    x, _ = batch()
    masks = torch.randint(0, 21, (2, H, W))
    out = model.train()(x, masks=masks)
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert not [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    groups = model.parameter_groups()
    assert groups["backbone"] and groups["new"]


def test_a_deeplab_takes_its_family_weights(tmp_path):
    state = family_file("convnext_tiny")
    model = DeepLabModel(
        DeepLabConfig(backbone="convnext_tiny", backbone_options=SMALL["convnext_tiny"])
    )
    report = load_deeplab_backbone(model, state)
    assert report.missing == [] and all(k.startswith("classifier.") for k in report.unexpected)
    assert torch.equal(
        model.state_dict()["net.body.features.7.0.block.0.weight"],
        state["features.7.0.block.0.weight"],
    )


def test_a_timm_model_names_the_extra_where_timm_is_missing(tmp_path, monkeypatch):
    AgenModel(config("timm:resnet18", "resnet38")).save_pretrained(tmp_path / "m")
    monkeypatch.setitem(__import__("sys").modules, "timm", None)
    with pytest.raises(ImportError, match=r"pip install 'agen_hf\[timm\]'"):
        AgenModel.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("b, stride", [("resnet38", 8), ("convnext_tiny", 32)])
def test_the_model_card_states_the_logits_shape_it_gives(b, stride, tmp_path):
    model = AgenModel(config("vgg16", b)).eval()
    model.save_pretrained(tmp_path)
    card = (tmp_path / "README.md").read_text()
    assert f"# (B, 21, H/{stride}, W/{stride})" in card
    with torch.no_grad():
        logits = model(batch()[0], segmentation_only=True).logits
    assert model.logit_stride == stride and logits.shape == (2, 21, H // stride, W // stride)

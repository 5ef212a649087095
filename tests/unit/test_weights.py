"""Backbone weights by path, with the key names and shapes of the published files."""

import pytest
import torch
from safetensors.torch import save_file
from torchvision.models import resnet101, vgg16, vgg16_bn

from agen_hf import AgenConfig, AgenModel
from agen_hf.deeplab import DeepLabConfig, DeepLabModel
from agen_hf.weights import load_resnet38, load_resnet101, load_vgg16, read_state_dict


def psa_resnet38_state_dict() -> dict[str, torch.Tensor]:
    """The converted ``ilsvrc-cls_rna-a1_cls1000_ep-0001.params`` as PSA/SEAM/RRM load it
    (resnet38d.py): conv1a, b2-b5 (ResBlock), b6-b7 (ResBlockBot), bn7, written out from the
    architecture of Wu et al., independently of agen_hf's modules."""
    g = torch.Generator().manual_seed(0)
    state = {"conv1a.weight": (64, 3, 3, 3)}

    def bn(name, c):
        for p in ("weight", "bias", "running_mean", "running_var"):
            state[f"{name}.{p}"] = (c,)

    def block(name, cin, mid, cout, projection):
        bn(f"{name}.bn_branch2a", cin)
        state[f"{name}.conv_branch2a.weight"] = (mid, cin, 3, 3)
        bn(f"{name}.bn_branch2b1", mid)
        state[f"{name}.conv_branch2b1.weight"] = (cout, mid, 3, 3)
        if projection:
            state[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)

    def bottleneck(name, cin, cout):
        bn(f"{name}.bn_branch2a", cin)
        state[f"{name}.conv_branch2a.weight"] = (cout // 4, cin, 1, 1)
        bn(f"{name}.bn_branch2b1", cout // 4)
        state[f"{name}.conv_branch2b1.weight"] = (cout // 2, cout // 4, 3, 3)
        bn(f"{name}.bn_branch2b2", cout // 2)
        state[f"{name}.conv_branch2b2.weight"] = (cout, cout // 2, 1, 1)
        state[f"{name}.conv_branch1.weight"] = (cout, cin, 1, 1)

    for stage, cin, mid, cout, n in (
        (2, 64, 128, 128, 3),
        (3, 128, 256, 256, 3),
        (4, 256, 512, 512, 6),
        (5, 512, 512, 1024, 3),
    ):
        for i in range(n):
            name = f"b{stage}" if i == 0 else f"b{stage}_{i}"
            block(name, cin if i == 0 else cout, mid, cout, projection=i == 0)
    bottleneck("b6", 1024, 2048)
    bottleneck("b7", 2048, 4096)
    bn("bn7", 4096)
    return {k: torch.randn(shape, generator=g) for k, shape in state.items()}


@pytest.fixture(scope="module")
def paper_model():
    return AgenModel(AgenConfig())


def test_torchvision_vgg16_fills_the_stem_and_branch_a(paper_model, tmp_path):
    state = vgg16().state_dict()
    torch.save(state, tmp_path / "vgg16-397923af.pth")
    report = load_vgg16(paper_model, tmp_path / "vgg16-397923af.pth")
    assert len(report.loaded) == 26 and report.missing == []
    assert sorted(report.unexpected) == sorted(k for k in state if k.startswith("classifier."))
    sd = paper_model.state_dict()
    assert torch.equal(sd["stem.conv1.conv1_1.weight"], state["features.0.weight"])
    assert torch.equal(sd["stem.conv2.conv2_2.bias"], state["features.7.bias"])
    assert torch.equal(sd["branch_a.conv3.conv3_3.weight"], state["features.14.weight"])
    assert torch.equal(sd["branch_a.conv5.conv5_3.weight"], state["features.28.weight"])
    assert "classifier.0.weight" in str(report) and "26 tensors loaded" in str(report)


def test_psa_resnet38_fills_branch_b(paper_model, tmp_path):
    state = psa_resnet38_state_dict()
    save_file(state, tmp_path / "resnet38.safetensors")
    report = load_resnet38(paper_model, tmp_path / "resnet38.safetensors")
    assert report.missing == []  # every unit of b3 ... b7 and bn7
    # conv1a and b2 are replaced by the shared VGG stem (section III.1)
    assert sorted(report.unexpected) == sorted(
        k for k in state if k.startswith(("conv1a.", "b2.", "b2_"))
    )
    sd = paper_model.state_dict()
    for key in (
        "b4_5.conv_branch2b1.weight",
        "b7.conv_branch2b2.weight",
        "bn7.running_var",
        "b5.conv_branch1.weight",
    ):
        assert torch.equal(sd[f"branch_b.{key}"], state[key])


def test_vgg16_bn_and_resnet101_into_their_models():
    model = AgenModel(
        AgenConfig(
            vgg_batch_norm=True,
            resnet_widths=(16, 32, 32, 64, 64),
            resnet_depths=(1, 1, 1),
            seg_head_channels=8,
            agm_cls_channels=8,
            agm_seg_channels=8,
            fc_channels=8,
        )
    )
    state = vgg16_bn().state_dict()
    report = load_vgg16(model, {"state_dict": {f"module.{k}": v for k, v in state.items()}})
    assert len(report.loaded) == 13 * 2 + 13 * 5 and report.missing == []
    assert torch.equal(
        model.state_dict()["branch_a.conv4.bn4_2.running_mean"], state["features.28.running_mean"]
    )  # conv4_2 is features.27
    with pytest.raises(ValueError, match="a VGG16-BN file for a VGG16 model"):
        load_vgg16(AgenModel(AgenConfig(resnet_widths=(16, 32, 32, 64, 64))), state)
    deeplab = DeepLabModel(DeepLabConfig())
    state = resnet101().state_dict()
    report = load_resnet101(deeplab, state)
    assert report.missing == [] and sorted(report.unexpected) == ["fc.bias", "fc.weight"]
    assert torch.equal(
        deeplab.state_dict()["net.backbone.layer3.22.conv2.weight"], state["layer3.22.conv2.weight"]
    )
    vgg_deeplab = DeepLabModel(DeepLabConfig(backbone="vgg16"))
    report = load_vgg16(vgg_deeplab, vgg16().state_dict())
    assert len(report.loaded) == 26 and report.missing == []


def test_bad_weight_files_are_clear_errors(tmp_path):
    small = AgenModel(AgenConfig.tiny(vgg_depths=(2, 2, 3, 3, 3), vgg_batch_norm=False))
    with pytest.raises(
        ValueError,
        match=r"features.0.weight has shape \(64, 3, 3, 3\) but "
        r"stem.conv1.conv1_1.weight needs \(8, 3, 3, 3\)",
    ):
        load_vgg16(small, vgg16().state_dict())
    with pytest.raises(ValueError, match="vgg_depths"):
        load_vgg16(AgenModel(AgenConfig.tiny()), vgg16().state_dict())
    with pytest.raises(FileNotFoundError, match="nowhere.pth: weight file not found"):
        read_state_dict(tmp_path / "nowhere.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00junk" * 10)
    with pytest.raises(ValueError, match="junk.pth: cannot read it as a state dict"):
        read_state_dict(tmp_path / "junk.pth")
    with pytest.raises(TypeError, match="load_resnet101: expected a ResNet-101 DeepLabModel"):
        load_resnet101(small, {})

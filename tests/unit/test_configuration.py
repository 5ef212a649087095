import json

import pytest

from agen_hf import VOC_CLASSES, AgenConfig


def test_defaults_are_the_papers():
    c = AgenConfig()
    assert c.num_labels == 21 and c.num_classes == 20
    assert c.id2label[0] == "background" and c.id2label[20] == "tvmonitor"
    assert c.label2id["person"] == 15
    assert c.vgg_channels == (64, 128, 256, 512, 512) and c.fc_channels == 1024
    assert c.resnet_widths == (256, 512, 1024, 2048, 4096) and c.resnet_depths == (3, 6, 3)
    assert c.agm_stages == (3, 4, 5) and c.coam_stages == (3, 4, 5)
    assert (c.agm_cls_channels, c.agm_seg_channels) == (256, 512)
    assert c.cam_alpha == 8
    assert (c.threshold_a, c.threshold_agm5, c.threshold_agm4, c.threshold_agm3) == (
        0.3,
        0.3,
        0.4,
        0.4,
    )
    assert c.threshold("A") == 0.3 and c.threshold("agm3") == 0.4
    assert c.use_boundary_loss and c.ignore_index == 255


def test_non_voc_labels_get_generic_names():
    c = AgenConfig(num_labels=3)
    assert c.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}


def test_stages_are_sorted_sets():
    c = AgenConfig(agm_stages=[5, 3], coam_stages=[5])
    assert c.agm_stages == (3, 5) and c.coam_stages == (5,)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(agm_stages=(2, 4)), "agm_stages"),
        (dict(agm_stages=(4,), coam_stages=(6,)), "coam_stages"),
        (dict(agm_stages=(4,), coam_stages=(4, 5)), "coam_stages"),
        (dict(num_labels=1), "num_labels"),
        (dict(threshold_a=1.0), "threshold_a"),
        (dict(threshold_agm3=0.0), "threshold_agm3"),
        (dict(threshold_agm5=-0.2), "threshold_agm5"),
        (dict(cam_alpha=0.5), "cam_alpha"),
        (dict(lse_pooling_r=-1.0), "lse_pooling_r"),
        (dict(lse_pooling_r=float("inf")), "lse_pooling_r"),
        (dict(lse_pooling_r=float("nan")), "lse_pooling_r"),
        (dict(lse_pooling_r="5"), "lse_pooling_r"),
        (dict(boundary_crf="magic"), "boundary_crf"),
        (dict(vgg_channels=(64, 128)), "vgg_channels"),
        (dict(resnet_depths=(3, 0, 3)), "resnet_depths"),
        (dict(fc_channels=0), "fc_channels"),
        (dict(resnet_dropout=(0.3, 1.0)), "resnet_dropout"),
        (dict(ignore_index=3), "ignore_index"),
        (dict(image_std=(0.2, 0.0, 0.2)), "image_std"),
        (dict(crf_bi_rgb_std=0), "crf_bi_rgb_std"),
        (dict(id2label={0: "a", 1: "b"}), "id2label"),
        (dict(agm_stages=4), "agm_stages"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        AgenConfig(**overrides)


def test_coam_without_agm_says_which():
    with pytest.raises(ValueError, match="CoAM-3 needs AGM-3"):
        AgenConfig(agm_stages=(4, 5), coam_stages=(3,))


def test_json_round_trip(tmp_path):
    c = AgenConfig.tiny(agm_stages=(4,), coam_stages=(4,), cam_alpha=6.0)
    path = tmp_path / "config.json"
    c.to_json_file(path)
    loaded = AgenConfig.from_json_file(path)
    assert loaded == c
    assert json.loads(path.read_text())["id2label"]["0"] == "background"
    assert AgenConfig.from_dict(c.to_dict()) == c


def test_json_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"num_labels": 21, "colour": 3}')
    with pytest.raises(ValueError, match=r"bad\.json.*unknown AgenConfig field\(s\): colour"):
        AgenConfig.from_json_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text("{num_labels")
    with pytest.raises(ValueError, match="broken.json: not valid JSON"):
        AgenConfig.from_json_file(broken)
    invalid = tmp_path / "invalid.json"
    invalid.write_text('{"threshold_a": 2}')
    with pytest.raises(ValueError, match="invalid.json: threshold_a"):
        AgenConfig.from_json_file(invalid)


def test_tiny_overrides():
    c = AgenConfig.tiny(num_labels=5)
    assert c.num_labels == 5 and c.fc_channels == 32
    assert len(VOC_CLASSES) == 21

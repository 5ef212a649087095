import math

import pytest
import torch
from torch.nn import functional as F

from agen_hf.cam import background_map, class_activation_maps, class_scores, pseudo_labels


def test_class_scores_by_hand():
    maps = torch.tensor([[[[0.0, 0.0], [0.0, math.log(3.0)]], [[2.0, 2.0], [2.0, 2.0]]]])
    # GAP (eq. 1): the mean of each map
    torch.testing.assert_close(class_scores(maps), torch.tensor([[math.log(3.0) / 4, 2.0]]))
    # r = 1: log((1 + 1 + 1 + 3) / 4) = log 1.5; a constant map scores its constant at any r
    torch.testing.assert_close(class_scores(maps, 1.0), torch.tensor([[math.log(1.5), 2.0]]))
    # r = 2: (1/2) log((3 + 9) / 4) = (1/2) log 3
    torch.testing.assert_close(class_scores(maps, 2.0), torch.tensor([[math.log(3.0) / 2, 2.0]]))


def test_class_scores_run_from_the_mean_to_the_maximum():
    maps = torch.randn(2, 3, 5, 7) * 3
    mean, peak = maps.mean(dim=(2, 3)), maps.amax(dim=(2, 3))
    scores = [class_scores(maps, r) for r in (0.01, 0.5, 2.0, 8.0)]
    # small r: GAP plus r/2 times the map's variance (the cumulant expansion)
    variance = maps.var(dim=(2, 3), unbiased=False)
    torch.testing.assert_close(scores[0], mean + 0.005 * variance, atol=1e-3, rtol=0)
    for low, high in zip(scores, scores[1:]):
        assert (high >= low - 1e-6).all()  # non-decreasing in r
    assert (scores[-1] <= peak + 1e-6).all()
    # max - log(hw) / r <= LSE <= max: within log(35) / 200 of the maximum at r = 200
    torch.testing.assert_close(
        class_scores(maps, 200.0), peak, atol=math.log(35) / 200 + 1e-5, rtol=0
    )


def test_class_scores_keep_gap_exact_and_lse_in_float32():
    maps = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16)
    assert torch.equal(class_scores(maps), maps.mean(dim=(2, 3)))  # the paper's path untouched
    assert class_scores(maps, 5.0).dtype == torch.float32
    big = torch.full((1, 1, 3, 3), 100.0)  # exp(500) overflows float32: computed stably
    torch.testing.assert_close(class_scores(big, 5.0), torch.tensor([[100.0]]))


def test_class_scores_gradient_leans_on_the_strongest_positions():
    maps = torch.tensor([[[[0.0, 1.0], [2.0, 3.0]]]], requires_grad=True)
    class_scores(maps, 2.0).sum().backward()
    w = torch.exp(2.0 * torch.tensor([0.0, 1.0, 2.0, 3.0]))
    torch.testing.assert_close(maps.grad.flatten(), w / w.sum())  # softmax(r F) weights
    maps.grad = None
    class_scores(maps).sum().backward()
    torch.testing.assert_close(maps.grad.flatten(), torch.full((4,), 0.25))


def test_class_activation_maps_by_hand():
    maps = torch.tensor([[[[2.0, -1.0], [1.0, 0.0]], [[-3.0, -1.0], [-2.0, -5.0]]]])
    cam = class_activation_maps(maps, (2, 2))
    torch.testing.assert_close(cam[0, 0], torch.tensor([[1.0, 0.0], [0.5, 0.0]]), atol=1e-4, rtol=0)
    assert torch.equal(cam[0, 1], torch.zeros(2, 2))  # an all-negative map stays zero


def test_class_activation_maps_upsample_then_normalise():
    maps = torch.randn(2, 3, 5, 7)
    cam = class_activation_maps(maps, (20, 28))
    ref = F.interpolate(maps.relu(), size=(20, 28), mode="bilinear", align_corners=False)
    ref = ref / ref.amax(dim=(2, 3), keepdim=True)
    assert cam.shape == (2, 3, 20, 28)
    torch.testing.assert_close(cam, ref, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(cam.amax(dim=(2, 3)), torch.ones(2, 3), atol=1e-4, rtol=0)


def test_background_map_by_hand():
    fg = torch.tensor([[[[1.0, 0.0], [0.5, 0.0]], [[0.0, 0.2], [0.1, 0.0]]]])
    bg = background_map(fg, alpha=2)
    assert bg.shape == (1, 1, 2, 2)
    torch.testing.assert_close(bg[0, 0], torch.tensor([[0.0, 0.64], [0.25, 1.0]]))


def test_pseudo_labels_by_hand():
    maps = torch.zeros(2, 3, 2, 2)
    # image 0: classes 0 and 1 present, class 2 absent (its strong map must be ignored)
    maps[0, 0] = torch.tensor([[4.0, 0.0], [2.0, 0.0]])  # -> [[1, 0], [.5, 0]]
    maps[0, 1] = torch.tensor([[0.0, 0.0], [3.0, 3.0]])  # -> [[0, 0], [1, 1]]
    maps[0, 2] = 5.0
    # image 1: only class 2
    maps[1, 2] = torch.tensor([[5.0, 1.0], [2.0, 0.0]])  # -> [[1, .2], [.4, 0]]
    labels = torch.tensor([[1, 1, 0], [0, 0, 1]])
    seeds = pseudo_labels(maps, labels, (2, 2), alpha=2, threshold=0.45)
    # image 0: bg = (1 - max)^2 = [[0, 1], [0, 0]]; (1, 0) has two maps above -> ignore
    # image 1: bg = [[0, .64], [.36, 1]]; (1, 0) has none above (.4, .36) -> ignore
    expected = torch.tensor([[[1, 0], [255, 2]], [[3, 0], [255, 0]]])
    assert seeds.dtype == torch.int64
    assert torch.equal(seeds, expected)


def test_pseudo_labels_custom_ignore_and_no_gradient():
    maps = torch.randn(1, 4, 3, 3, requires_grad=True)
    seeds = pseudo_labels(maps, torch.ones(1, 4), (12, 12), alpha=8, threshold=0.3, ignore_index=-1)
    assert seeds.shape == (1, 12, 12) and not seeds.requires_grad
    assert set(seeds.unique().tolist()) <= {-1, 0, 1, 2, 3, 4}


def test_image_without_foreground_is_all_background():
    seeds = pseudo_labels(torch.randn(1, 3, 4, 4), torch.zeros(1, 3), (8, 8), 8, 0.3)
    assert torch.equal(seeds, torch.zeros(1, 8, 8, dtype=torch.int64))


def test_label_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="image_labels"):
        pseudo_labels(torch.randn(1, 3, 4, 4), torch.zeros(1, 20), (8, 8), 8, 0.3)


def test_dense_pseudo_labels_by_hand():
    from agen_hf.cam import dense_pseudo_labels

    # 1 x 3 maps of two classes; class 1 is not in the image label and is zeroed
    maps = torch.tensor([[[[4.0, 1.0, 0.0]], [[0.0, 0.0, 9.0]]]])
    labels = torch.tensor([[1.0, 0.0]])
    out = dense_pseudo_labels(maps, labels, (1, 3), alpha=1.0)
    # class 0's CAM: [1, 0.25, 0] (divided by its max); background 1 - max: [0, 0.75, 1]
    assert out.tolist() == [[[1, 0, 0]]]
    out = dense_pseudo_labels(maps, torch.tensor([[1.0, 1.0]]), (1, 3), alpha=1.0)
    assert out.tolist() == [[[1, 0, 2]]]


def test_seeds_match_a_per_pixel_reference():
    """Seeds (section IV.1) against a slow loop: exactly one of the C+1 maps above δ."""
    torch.manual_seed(3)
    class_maps = torch.randn(2, 4, 5, 6)
    labels = torch.tensor([[1.0, 0, 1, 0], [0, 1, 1, 1]])
    seeds = pseudo_labels(class_maps, labels, (10, 12), alpha=2.0, threshold=0.3)
    fg = class_activation_maps(class_maps, (10, 12)) * labels[:, :, None, None]
    maps = torch.cat([background_map(fg, 2.0), fg], dim=1)
    for b in range(2):
        for y in range(10):
            for x in range(12):
                above = [k for k in range(5) if maps[b, k, y, x] > 0.3]
                assert seeds[b, y, x] == (above[0] if len(above) == 1 else 255)


def _all_class_maps(class_maps, labels, size, alpha):
    """Eq. 2-4 as written: every one of the C maps, the absent classes' zeroed."""
    fg = class_activation_maps(class_maps, size) * labels[:, :, None, None]
    return torch.cat([background_map(fg, alpha), fg], dim=1)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_seeds_over_the_image_classes_equal_eq_2_to_4_over_all_classes(seed):
    """The seeds are computed on each image's own classes only; that must give exactly the
    seeds and dense labels of eq. 2-4 over all C maps (absent ones zeroed), with 0 to 5
    classes per image (an image with none included)."""
    from agen_hf.cam import dense_pseudo_labels

    g = torch.Generator().manual_seed(seed)
    class_maps = torch.randn(6, 20, 8, 8, generator=g) * 3
    labels = torch.zeros(6, 20)
    for b, k in enumerate([0, 1, 2, 3, 5, 1]):
        labels[b, torch.randperm(20, generator=g)[:k]] = 1
    maps = _all_class_maps(class_maps, labels, (64, 64), 8.0)
    above = (maps > 0.3).sum(dim=1)
    expected = torch.where(above == 1, maps.argmax(dim=1), 255)
    assert torch.equal(pseudo_labels(class_maps, labels, (64, 64), 8.0, 0.3), expected)
    assert torch.equal(dense_pseudo_labels(class_maps, labels, (64, 64), 8.0), maps.argmax(dim=1))


def test_negative_threshold_is_an_error():
    with pytest.raises(ValueError, match="threshold"):
        pseudo_labels(torch.randn(1, 3, 4, 4), torch.ones(1, 3), (8, 8), 8, -0.1)

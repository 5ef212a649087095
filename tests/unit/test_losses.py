import math

import pytest
import torch

from agen_hf import crf as crf_module
from agen_hf.crf import CrfParams, crf_refine, dense_crf_torch
from agen_hf.losses import balanced_seeding_loss, boundary_loss, multilabel_loss


def test_multilabel_loss_by_hand():
    assert multilabel_loss(
        torch.zeros(2, 3), torch.tensor([[1, 0, 1], [0, 0, 0]])
    ).item() == pytest.approx(3 * math.log(2))
    loss = multilabel_loss(torch.tensor([[2.0, -1.0]]), torch.tensor([[1.0, 0.0]]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1)))


def test_multilabel_loss_is_stable_and_averages_over_the_batch():
    loss = multilabel_loss(
        torch.tensor([[200.0, -200.0], [0.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    )
    assert loss.item() == pytest.approx((400 + 2 * math.log(2)) / 2)
    with pytest.raises(ValueError, match="shape"):
        multilabel_loss(torch.zeros(2, 3), torch.zeros(2, 4))


def test_balanced_seeding_loss_by_hand():
    ln2, ln3 = math.log(2), math.log(3)
    # 1 image, 3 classes (0 = background), 4 pixels in a row
    logits = torch.tensor([[0.0, 0.0, ln3, 9.0], [0.0, ln2, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]]).view(
        1, 3, 1, 4
    )
    seeds = torch.tensor([[[0, 1, 2, 255]]])
    # bg: -log(1/3); fg: (-log(2/4) - log(1/5)) / 2; the ignored pixel counts for nothing
    expected = ln3 + (ln2 + math.log(5)) / 2
    assert balanced_seeding_loss(logits, seeds).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_seeding_loss_pools_the_whole_batch():
    logits = torch.zeros(2, 2, 1, 2)
    logits[1, 0, 0, 0] = math.log(3)  # p(bg) = 3/4 at image 1, pixel 0
    seeds = torch.tensor([[[0, 0]], [[0, 255]]])
    # three background pixels in the batch: (-log .5 - log .5 - log .75) / 3; no foreground
    expected = (2 * math.log(2) - math.log(0.75)) / 3
    assert balanced_seeding_loss(logits, seeds).item() == pytest.approx(expected, rel=1e-6)


def test_balanced_seeding_loss_without_seeds_is_zero_with_a_gradient():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = balanced_seeding_loss(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0 and torch.equal(logits.grad, torch.zeros_like(logits))
    with pytest.raises(ValueError, match="spatial"):
        balanced_seeding_loss(logits, torch.zeros(1, 3, 3, dtype=torch.long))


def reference_seeding_loss(logits, seeds, ignore_index=255):
    """Eq. 12 the obvious way, in float64: log-softmax, then the two group means."""
    log_probs = torch.log_softmax(logits.double(), dim=1)
    loss = logits.new_zeros((), dtype=torch.float64)
    for group in (seeds == 0, (seeds > 0) & (seeds != ignore_index)):
        target = torch.where(group, seeds, 0)
        nll = -log_probs.gather(1, target.unsqueeze(1)).squeeze(1)
        loss = loss + (nll * group).sum() / group.sum().clamp_min(1)
    return loss


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "bf16"])
def test_balanced_seeding_loss_and_gradient_equal_the_log_softmax_form(layout):
    torch.manual_seed(0)
    logits = 4 * torch.randn(3, 6, 7, 9)
    seeds = torch.randint(0, 6, (3, 7, 9))
    seeds[torch.rand(3, 7, 9) < 0.4] = 255
    seeds[1] = 255  # an image without seeds
    if layout == "channels_last":
        logits = logits.contiguous(memory_format=torch.channels_last)
    if layout == "bf16":
        logits = logits.bfloat16()
    ours = logits.clone().requires_grad_()
    ref = logits.clone().requires_grad_()
    loss = balanced_seeding_loss(ours, seeds)
    expected = reference_seeding_loss(ref, seeds)
    loss.backward()
    expected.backward()
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert ours.grad.dtype == logits.dtype and ours.grad.shape == logits.shape
    tolerance = 1e-2 if layout == "bf16" else 1e-6
    torch.testing.assert_close(ours.grad.float(), ref.grad.float(), rtol=tolerance, atol=1e-7)
    assert torch.all(ours.grad[1] == 0)  # no seeds, no gradient
    # a second backward through the same graph (retain_graph) gives the same gradient again
    twice = logits.clone().requires_grad_()
    again = balanced_seeding_loss(twice, seeds)
    again.backward(retain_graph=True)
    first = twice.grad.clone()
    again.backward()
    torch.testing.assert_close(twice.grad, 2 * first)
    # softmax - onehot sums to 0 over the classes at every pixel (bf16 rounds each term)
    assert torch.all(ours.grad.float().sum(dim=1).abs() < (1e-3 if layout == "bf16" else 1e-6))


def slow_mean_field(image, probs, p: CrfParams):
    """Krähenbühl-Koltun mean field with explicit loops: the obvious implementation."""
    k, h, w = probs.shape
    pix = [(y, x) for y in range(h) for x in range(w)]
    n = len(pix)

    def kernel(bilateral):
        m = [[0.0] * n for _ in range(n)]
        for i, (yi, xi) in enumerate(pix):
            for j, (yj, xj) in enumerate(pix):
                d = (xi - xj) ** 2 + (yi - yj) ** 2
                if bilateral:
                    c = sum(
                        (float(image[ch, yi, xi]) - float(image[ch, yj, xj])) ** 2
                        for ch in range(3)
                    )
                    m[i][j] = math.exp(-d / (2 * p.bi_xy_std**2) - c / (2 * p.bi_rgb_std**2))
                else:
                    m[i][j] = math.exp(-d / (2 * p.pos_xy_std**2))
        norm = [1 / math.sqrt(sum(row)) for row in m]
        return [[norm[i] * m[i][j] * norm[j] for j in range(n)] for i in range(n)]

    kg, kb = kernel(False), kernel(True)
    unary = [[math.log(max(float(probs[c, y, x]), 1e-8)) for c in range(k)] for (y, x) in pix]

    def normalise(row):
        mx = max(row)
        e = [math.exp(v - mx) for v in row]
        return [v / sum(e) for v in e]

    q = [normalise(u) for u in unary]
    for _ in range(p.iterations):
        q = [
            normalise(
                [
                    unary[i][c]
                    + sum((p.pos_w * kg[i][j] + p.bi_w * kb[i][j]) * q[j][c] for j in range(n))
                    for c in range(k)
                ]
            )
            for i in range(n)
        ]
    return torch.tensor([[q[i][c] for i in range(n)] for c in range(k)]).view(k, h, w)


def _toy_case(h=3, w=4, k=3):
    g = torch.Generator().manual_seed(3)
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    probs = torch.softmax(torch.randn(k, h, w, generator=g) * 2, dim=0)
    return image, probs


def test_torch_crf_equals_explicit_mean_field():
    image, probs = _toy_case()
    params = CrfParams(
        iterations=3, pos_xy_std=1.5, pos_w=3, bi_xy_std=2.0, bi_rgb_std=40.0, bi_w=5
    )
    torch.testing.assert_close(
        dense_crf_torch(image, probs, params),
        slow_mean_field(image, probs, params),
        atol=1e-5,
        rtol=1e-4,
    )


def test_crf_refine_restricts_to_present_classes():
    image, probs = _toy_case(k=4)
    present = torch.tensor([[True, False, True, False]])
    refined = crf_refine(image[None], probs[None], present, CrfParams(iterations=2), "torch")
    assert torch.equal(refined[0, 1], torch.zeros(3, 4)) and torch.equal(
        refined[0, 3], torch.zeros(3, 4)
    )
    torch.testing.assert_close(refined.sum(dim=1), torch.ones(1, 3, 4))
    restricted = probs[[0, 2]] / probs[[0, 2]].sum(0)
    torch.testing.assert_close(
        refined[0, [0, 2]],
        slow_mean_field(image, restricted, CrfParams(iterations=2)),
        atol=1e-5,
        rtol=1e-4,
    )


def test_boundary_loss_against_explicit_kl_and_its_gradient():
    torch.manual_seed(1)
    images = torch.randint(0, 256, (2, 3, 6, 8)).float()
    logits = torch.randn(2, 3, 3, 4, requires_grad=True)
    labels = torch.tensor([[1, 0], [1, 1]])
    params = CrfParams(iterations=2)
    loss = boundary_loss(images, logits, labels, params, backend="torch")
    small = torch.nn.functional.interpolate(
        images, size=(3, 4), mode="bilinear", align_corners=False, antialias=True
    )
    s = torch.softmax(logits.detach(), dim=1)
    half = params.scaled(2.0)  # the image is twice the logits' size
    r0 = torch.zeros(3, 3, 4)
    r0[:2] = slow_mean_field(small[0], s[0, :2] / s[0, :2].sum(0), half)
    r1 = slow_mean_field(small[1], s[1], half)
    r = torch.stack([r0, r1])
    kl = torch.xlogy(r, r) - r * torch.log(s)
    assert loss.item() == pytest.approx(kl.sum(1).mean().item(), rel=1e-4)
    loss.backward()
    # d/dlogits of mean_u sum_c -R log softmax = (S - R) / (B h w) since R sums to 1
    torch.testing.assert_close(logits.grad, (s - r) / (2 * 3 * 4), atol=1e-5, rtol=1e-3)


@pytest.mark.skipif(not crf_module.pydensecrf_available(), reason="pydensecrf not installed")
def test_pydensecrf_and_torch_backends_agree_on_a_two_region_image():
    h, w = 24, 24
    image = torch.zeros(3, h, w)
    image[:, :, 12:] = 255.0  # black left half, white right half
    truth = torch.zeros(h, w, dtype=torch.long)
    truth[:, 12:] = 1
    g = torch.Generator().manual_seed(0)
    logits = torch.nn.functional.one_hot(truth, 2).permute(2, 0, 1).float() * 1.0
    logits = logits + torch.randn(2, h, w, generator=g) * 1.2  # noisy unaries
    probs = torch.softmax(logits, dim=0)[None]
    present = torch.ones(1, 2, dtype=torch.bool)
    params = CrfParams(iterations=5, pos_xy_std=1.0, bi_xy_std=6.0)
    noisy_acc = (probs[0].argmax(0) == truth).float().mean()
    for backend in ("pydensecrf", "torch"):
        acc = (
            (crf_refine(image[None], probs, present, params, backend)[0].argmax(0) == truth)
            .float()
            .mean()
        )
        assert acc > max(0.97, noisy_acc), backend


def test_missing_pydensecrf_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(crf_module, "_dcrf", None)
    image, probs = _toy_case()
    with pytest.raises(ImportError, match=r"agen_hf\[crf\].*boundary_crf='torch'"):
        crf_refine(
            image[None], probs[None], torch.ones(1, 3, dtype=torch.bool), CrfParams(), "pydensecrf"
        )


def test_seeding_loss_with_far_apart_logits_equals_the_log_softmax_form():
    """A trained network's logits lie hundreds apart: the exponentials below float32's normal
    range are floored (EXP_FLOOR, a CPU's exp slows down there), which changes no loss value
    and no gradient entry by more than 2e-38 against the float64 log-softmax form."""
    from agen_hf.losses import EXP_FLOOR

    torch.manual_seed(1)
    logits = 150 * torch.randn(2, 5, 6, 8)  # most classes > 87 below the peak
    seeds = torch.randint(0, 5, (2, 6, 8))
    peak = logits.amax(dim=1, keepdim=True)
    assert ((logits - peak) < EXP_FLOOR).float().mean() > 0.5
    ours = logits.clone().requires_grad_()
    ref = logits.clone().double().requires_grad_()
    loss = balanced_seeding_loss(ours, seeds)
    expected = reference_seeding_loss(ref, seeds)
    loss.backward()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert (ours.grad.double() - ref.grad).abs().max() < 1e-6
    target = torch.nn.functional.one_hot(seeds, 5).permute(0, 3, 1, 2).bool()
    floored = ((logits - peak) < EXP_FLOOR) & ~target
    assert ours.grad[floored].abs().max() <= 2e-38  # the floor's softmax, divided by total >= 1


def test_data_parallel_seeding_loss_pools_the_global_batch():
    from agen_hf.losses import ProcessGroup, fully_supervised_loss

    torch.manual_seed(0)
    logits = torch.randn(4, 3, 5, 5)
    seeds = torch.randint(0, 3, (4, 5, 5))
    seeds[0, :3] = 255
    seeds[2:, :, :4] = 0
    full = balanced_seeding_loss(logits, seeds)
    halves = [(logits[:2], seeds[:2]), (logits[2:], seeds[2:])]

    def counts(i):  # what an all-reduce sum would return on process i
        return lambda c: sum(
            torch.stack(
                [
                    (s[1] != 255).logical_and(s[1] == 0).sum(),
                    (s[1] != 255).logical_and(s[1] > 0).sum(),
                ]
            ).float()
            for s in halves
        )

    per_process = [
        balanced_seeding_loss(l, s, process_group=ProcessGroup(2, counts(i)))
        for i, (l, s) in enumerate(halves)
    ]
    assert torch.stack(per_process).mean().item() == pytest.approx(full.item(), rel=1e-6)
    masks = seeds.clone()
    total = fully_supervised_loss(logits, masks)
    valid = lambda m: (m != 255).sum().float()
    per_process = [
        fully_supervised_loss(
            l, s, process_group=ProcessGroup(2, lambda c: valid(seeds[:2]) + valid(seeds[2:]))
        )
        for l, s in halves
    ]
    assert torch.stack(per_process).mean().item() == pytest.approx(total.item(), rel=1e-6)
    assert total.item() == pytest.approx(
        torch.nn.functional.cross_entropy(logits, masks, ignore_index=255).item(), rel=1e-6
    )

import pytest
import torch
from torch.nn import functional as F

from agen_hf import AttentionGuidedModule, ContextAttention
from agen_hf import coam as coam_module


def explicit_coam(low, high, lam):
    """Eq. 5-9 with the N x N attention map written out."""
    b, c, h, w = low.shape
    high = F.interpolate(high, size=(h, w), mode="bilinear", align_corners=False)
    lo, hi = low.reshape(b, c, -1), high.reshape(b, c, -1)  # (B, C, N)
    scores = torch.einsum("bci,bcj->bij", lo, hi)
    a = torch.exp(scores - scores.amax(dim=2, keepdim=True))  # eq. 6 (over its row's max)
    a = a / a.sum(dim=2, keepdim=True)  # eq. 7
    enhanced = lam * torch.einsum("bij,bcj->bci", a, lo)  # eq. 8
    return (enhanced + lo).reshape(b, c, h, w)  # eq. 9


def test_coam_starts_as_the_identity():
    coam = ContextAttention()
    assert [n for n, _ in coam.named_parameters()] == ["weight"]
    assert coam.weight.item() == 0
    low, high = torch.randn(2, 20, 6, 5), torch.randn(2, 20, 3, 3)
    assert torch.equal(coam(low, high), low)


@pytest.mark.parametrize("channels", [20, 3, 16])
def test_coam_equals_the_explicit_attention(channels):
    coam = ContextAttention()
    with torch.no_grad():
        coam.weight.fill_(0.7)
    low = torch.randn(2, channels, 6, 5)
    high = torch.randn(2, channels, 3, 4)  # upsampled to low's size inside
    torch.testing.assert_close(coam(low, high), explicit_coam(low, high, 0.7), atol=1e-5, rtol=1e-4)


def test_coam_bf16_paths_agree_in_value_and_gradient(monkeypatch):
    """Under bf16 autocast, the float32 explicit products (N <= EXPLICIT_MAX_POSITIONS) and the
    fused kernel (forced here) give the same maps and gradients to bf16 rounding."""
    torch.manual_seed(0)
    low, high = torch.randn(2, 20, 8, 8), torch.randn(2, 20, 4, 4)
    results = []
    for limit in (coam_module.EXPLICIT_MAX_POSITIONS, 0):  # explicit, then fused
        monkeypatch.setattr(coam_module, "EXPLICIT_MAX_POSITIONS", limit)
        coam = ContextAttention()
        with torch.no_grad():
            coam.weight.fill_(0.5)
        x, y = low.bfloat16().requires_grad_(), high.bfloat16().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = coam(x, y)
        out.float().sin().sum().backward()
        assert all(g is not None and g.abs().sum() > 0 for g in (x.grad, y.grad, coam.weight.grad))
        results.append((out.float(), x.grad.float(), y.grad.float(), coam.weight.grad))
    for explicit, fused in zip(*results):
        torch.testing.assert_close(explicit, fused, atol=0.05, rtol=0.02)


def test_coam_attention_keeps_float32_dot_products_under_bf16_autocast():
    """Eq. 6's unscaled dot products reach the hundreds here (std ~ 70): rounded to bfloat16
    they would move attention weights by tens of percent (the output by up to ~3 here)."""
    torch.manual_seed(0)
    low, high = torch.randn(2, 20, 8, 8) * 4, torch.randn(2, 20, 8, 8) * 4
    coam = ContextAttention()
    with torch.no_grad():
        coam.weight.fill_(1.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = coam(low.bfloat16(), high.bfloat16())
    assert out.dtype == torch.bfloat16
    # against eq. 5-9 in float32 on the same bf16-rounded inputs: only the rounding of the
    # attended maps and of the residual sum to bf16 (unit roundoff 2^-8 each), nothing more
    low_r = low.bfloat16().float()
    exact = explicit_coam(low_r, high.bfloat16().float(), 1.0)
    bound = 2**-8 * ((exact - low_r).abs() + exact.abs()) + 1e-6
    assert ((out.float() - exact).abs() <= bound).all()


def test_coam_lambda_learns_from_a_loss():
    coam = ContextAttention()
    low, high = torch.randn(1, 4, 5, 5), torch.randn(1, 4, 5, 5)
    coam(low, high).square().sum().backward()
    assert coam.weight.grad is not None and coam.weight.grad.abs() > 0


def test_coam_rejects_mismatched_classes():
    with pytest.raises(ValueError, match="high"):
        ContextAttention()(torch.randn(1, 4, 5, 5), torch.randn(1, 3, 5, 5))


def test_agm_shares_its_last_two_layers_across_stages():
    agm = AttentionGuidedModule(
        (3, 4, 5),
        {3: 8, 4: 16, 5: 16},
        {3: 12, 4: 24, 5: 24},
        num_classes=20,
        cls_channels=10,
        seg_channels=14,
    )
    f3, f4 = torch.randn(2, 8, 16, 16), torch.randn(2, 16, 8, 8)
    assert agm.class_maps(3, f3).shape == (2, 20, 16, 16)
    assert agm.class_maps(4, f4).shape == (2, 20, 8, 8)
    assert agm.segment(5, torch.randn(2, 24, 8, 8)).shape == (2, 21, 8, 8)
    assert set(agm.cls_adapters) == {"3", "4", "5"}
    # one shared 3x3 conv and one shared 1x1 conv per branch, whatever the number of stages
    assert agm.cls_shared[0][0].weight.shape == (10, 10, 3, 3)
    assert agm.cls_shared[1].weight.shape == (20, 10, 1, 1)
    assert agm.seg_shared[0][0].weight.shape == (14, 14, 3, 3)
    assert agm.seg_shared[1].weight.shape == (21, 14, 1, 1)
    assert agm.seg_adapters["3"][0].weight.shape == (14, 12, 3, 3)

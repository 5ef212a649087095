import pytest
import torch
from torch.nn import functional as F

from agen_hf import AttentionGuidedModule, ContextAttention


def explicit_coam(low, high, lam):
    """Eq. 5-9 with the N x N attention map written out."""
    b, c, h, w = low.shape
    high = F.interpolate(high, size=(h, w), mode="bilinear", align_corners=False)
    lo, hi = low.reshape(b, c, -1), high.reshape(b, c, -1)  # (B, C, N)
    a = torch.exp(torch.einsum("bci,bcj->bij", lo, hi))  # eq. 6
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

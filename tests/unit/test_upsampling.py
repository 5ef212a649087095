import pytest
import torch
from torch.nn import functional as F

from agen_hf.upsampling import interpolation_matrix, upsample_bilinear


def test_interpolation_matrix_by_hand():
    # 2 -> 4, half-pixel centres: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25 (last clamped)
    expected = torch.tensor([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])
    torch.testing.assert_close(interpolation_matrix(4, 2), expected)
    # 4 -> 2: sources 0.5 and 2.5
    torch.testing.assert_close(
        interpolation_matrix(2, 4), torch.tensor([[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])
    )
    assert torch.equal(interpolation_matrix(5, 5), torch.eye(5))


@pytest.mark.parametrize(
    "shape,size",
    [
        ((8, 8), (64, 64)),
        ((7, 5), (50, 37)),
        ((16, 16), (8, 8)),
        ((10, 3), (3, 10)),
        ((1, 1), (5, 4)),
        ((63, 47), (500, 375)),
    ],
)
def test_equals_torch_bilinear_values_and_gradient(shape, size):
    x = torch.randn(2, 3, *shape, dtype=torch.float64, requires_grad=True)
    ours = upsample_bilinear(x, size)
    ref = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    g = torch.randn_like(ref)
    (grad_ours,) = torch.autograd.grad(ours, x, g)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=0, atol=1e-12)


def test_channels_last_input_and_same_size():
    x = torch.randn(2, 21, 8, 8).contiguous(memory_format=torch.channels_last)
    ref = F.interpolate(x, size=(64, 64), mode="bilinear", align_corners=False)
    torch.testing.assert_close(upsample_bilinear(x, (64, 64)), ref, rtol=1e-5, atol=1e-5)
    assert upsample_bilinear(x, (8, 8)) is x


def test_autocast_does_not_lower_the_precision():
    x = torch.randn(1, 2, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = upsample_bilinear(x, (16, 16))
    assert y.dtype == torch.float32
    torch.testing.assert_close(y, upsample_bilinear(x, (16, 16)))


def test_integer_input_is_an_error():
    with pytest.raises(TypeError, match="floating"):
        upsample_bilinear(torch.zeros(1, 1, 2, 2, dtype=torch.long), (4, 4))


def test_first_use_under_inference_mode_then_training():
    """The weights are cached: a size first met in evaluation (inference mode) must still
    backpropagate in training."""
    with torch.inference_mode():
        upsample_bilinear(torch.randn(1, 1, 3, 3), (13, 11))
    x = torch.randn(1, 1, 3, 3, requires_grad=True)
    upsample_bilinear(x, (13, 11)).sum().backward()
    torch.testing.assert_close(x.grad.sum(), torch.tensor(13.0 * 11.0))

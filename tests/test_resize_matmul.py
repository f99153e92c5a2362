"""The antialiased bilinear resize as banded matrix products equals torch's kernel; the attender takes it only on the
fast paths; the tiles' nearest upsampling through complex pairs equals the plain expand."""

import pytest
import torch
import torch.nn.functional as F

from uplift_diffusion import NEIGHBOURHOODS, fast_paths
from uplift_diffusion import attender as attender_module
from uplift_diffusion.attender import local_attend
from uplift_diffusion.utils import resize_matmul as resize_module
from uplift_diffusion.utils.image_ops import bilinear_resize
from uplift_diffusion.utils.resize_matmul import applies, axis_weights, bilinear_resize_fast, resize_matmul

SIZES = [
    ((128, 128), (112, 112)),  # dinov2-s14's last step: 8:7 down, per tile
    ((112, 112), (128, 128)),  # and its image: 7:8 up
    ((13, 17), (11, 29)),  # odd, down in one axis and up in the other
    ((64, 48), (33, 47)),  # almost 2x down
    ((30, 12), (30, 31)),  # one axis unchanged
    ((9, 40), (25, 40)),
    ((256, 200), (224, 175)),
]


def _torch_resize(x, size):
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-6), (torch.float64, 1e-13)])
@pytest.mark.parametrize("shape, size", SIZES)
def test_equals_torch_antialiased_resize(shape, size, dtype, tolerance):
    x = torch.randn(2, 3, *shape, generator=torch.Generator().manual_seed(sum(shape)), dtype=dtype)
    assert applies(x, size)
    expected = _torch_resize(x, size)
    out = resize_matmul(x, size)
    assert out.shape == expected.shape and out.dtype == dtype
    assert ((out - expected).abs().max() / expected.abs().max()).item() <= tolerance


def test_writes_into_a_channel_slice_only():
    x = torch.randn(2, 5, 40, 36)
    out = torch.zeros(2, 9, 35, 31)
    result = resize_matmul(x, (35, 31), out=out[:, 2:7])
    assert result.data_ptr() == out[:, 2:7].data_ptr()
    torch.testing.assert_close(out[:, 2:7], _torch_resize(x, (35, 31)), rtol=1e-6, atol=1e-6)
    assert not out[:, :2].any() and not out[:, 7:].any()


def test_weights_are_torch_kernels():
    weights = axis_weights(128, 112, torch.float32)
    assert weights.shape == (112, 128)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(112))  # a convex combination per output
    assert (weights.ne(0).sum(dim=1) <= 3).all()  # banded: 8:7 reads at most three inputs
    signal = torch.randn(1, 1, 128, 5)
    torch.testing.assert_close(torch.einsum("oi,bciw->bcow", weights, signal), _torch_resize(signal, (112, 5)))


def test_applies_only_where_measured_faster_and_torch_agrees():
    x = torch.randn(1, 4, 128, 128)
    assert applies(x, (112, 112))
    assert not applies(x.bfloat16(), (112, 112))  # torch's kernel computes bf16 in float32: left to it
    assert not applies(torch.randn(1, 384, 8, 8), (7, 7))  # tiny maps: the fixed cost of the products dominates
    assert not applies(x, (30, 30))  # 4x down: too many taps per output
    assert not applies(torch.randn(1, 1, 600, 600), (520, 520))  # beyond _MAX_SIZE
    assert not applies(torch.randn(1, 1, 300, 1), (200, 1))  # width 1: torch's own kernel differs there
    assert not applies(x.requires_grad_(), (112, 112))
    with torch.no_grad():
        assert applies(x, (112, 112))


def test_fast_resize_falls_back_to_the_plain_op(monkeypatch):
    x = torch.randn(1, 2, 6, 6)
    monkeypatch.setattr(resize_module, "resize_matmul", _refuse)
    assert torch.equal(bilinear_resize_fast(x, (5, 5)), bilinear_resize(x, (5, 5)))  # below _MIN_PIXELS


def _refuse(*args, **kwargs):
    raise AssertionError("resize_matmul called")


def _attend_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    attention = torch.softmax(torch.randn(1, 17, 64, 48, generator=g) * 3, dim=1)
    return attention, torch.randn(1, 24, 32, 24, generator=g)


def test_attender_resizes_with_matmul_on_the_fast_path(monkeypatch):
    attention, value = _attend_inputs()
    calls = []
    monkeypatch.setattr(resize_module, "resize_matmul",
                        lambda *a, **k: calls.append(1) or resize_matmul(*a, **k))
    with torch.inference_mode(), fast_paths.fast_paths(True):
        out = local_attend(attention, value, NEIGHBOURHOODS[17], output_size=(56, 42))
        plain = bilinear_resize(local_attend(attention, value, NEIGHBOURHOODS[17]), (56, 42))
    assert calls  # once per tile
    torch.testing.assert_close(out, plain, rtol=0, atol=1e-6 * plain.abs().max().item())


def test_attender_switched_off_uses_the_plain_resize(monkeypatch):
    attention, value = _attend_inputs(1)
    with torch.inference_mode():
        expected = bilinear_resize(local_attend(attention, value, NEIGHBOURHOODS[17]), (56, 42))
    monkeypatch.setattr(resize_module, "resize_matmul", _refuse)
    with torch.inference_mode(), fast_paths.fast_paths(False):
        out = local_attend(attention, value, NEIGHBOURHOODS[17], output_size=(56, 42))
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


_SAME_WIDTH_INTS = {torch.float32: torch.int32, torch.float64: torch.int64, torch.bfloat16: torch.int16}


@pytest.mark.parametrize("dtype", sorted(_SAME_WIDTH_INTS, key=str))
def test_nearest_up_by_complex_pairs_equals_expand(dtype):
    x = torch.randn(2, 5, 7, 9).to(dtype)[:, 1:4, 2:]  # a strided view, as the tiles' slices are
    x[0, 0, 0, :4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-45]).to(dtype)
    b, ch, h, w = x.shape
    expected = x[:, :, :, None, :, None].expand(b, ch, h, 2, w, 2).reshape(b, ch, 2 * h, 2 * w)
    out = attender_module._nearest_up(x, 2)
    assert out.shape == expected.shape and out.dtype == dtype and out.is_contiguous()
    bits = _SAME_WIDTH_INTS[dtype]
    assert torch.equal(out.view(bits), expected.contiguous().view(bits))  # bit for bit, NaN and -0.0 included

"""Every Local Attender path (eager tiled, training, fused/compiled, channels-last, fp16/bf16) equals the direct
materialising formulation."""

import shutil

import pytest
import torch

from uplift_diffusion import NEIGHBOURHOODS, LocalAttender, fast_paths
from uplift_diffusion import attender as attender_module
from uplift_diffusion.attender import local_attend, local_attend_fused
from uplift_diffusion.testing import direct_local_attend
from uplift_diffusion.utils.image_ops import bilinear_resize


def _inputs(b, channels, h, w, c, n, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    attention = torch.softmax(torch.randn(b, n, c * h, c * w, generator=g) * 3, dim=1)
    value = torch.randn(b, channels, h, w, generator=g)
    return attention.to(dtype), value.to(dtype)


@pytest.fixture
def small_tiles(monkeypatch):
    """Tiles of a few rows and channels, so that small maps cover many tiles and ragged last tiles."""
    monkeypatch.setattr(attender_module, "_TILE_ROW_ELEMENTS", 40)
    monkeypatch.setattr(attender_module, "_TILE_ELEMENTS", 300)
    monkeypatch.setattr(attender_module, "_GATHER_MAX_TOKENS", 0)  # small maps too: the tile loop, not the matmul


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
@pytest.mark.parametrize("c", [1, 2, 3])
def test_default_path_matches_direct(n, c, small_tiles):
    attention, value = _inputs(2, 7, 5, 6, c, n, seed=n + c)
    with torch.inference_mode():
        out = local_attend(attention, value, NEIGHBOURHOODS[n])
    expected = direct_local_attend(attention.double(), value.double(), NEIGHBOURHOODS[n])
    assert out.shape == (2, 7, 5 * c, 6 * c) and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
@pytest.mark.parametrize("c", [1, 2, 3])
def test_small_maps_take_one_matmul_equal_to_direct(n, c, monkeypatch):
    attention, value = _inputs(2, 7, 5, 6, c, n, seed=n + c)
    calls = []
    monkeypatch.setattr(attender_module.torch, "bmm", lambda *a: calls.append(1) or torch.matmul(*a))
    with torch.inference_mode():
        out = local_attend(attention, value, NEIGHBOURHOODS[n])
        resized = local_attend(attention, value, NEIGHBOURHOODS[n], output_size=(11, 9))
    assert calls == [1, 1]  # one product per call, no tile loop
    expected = direct_local_attend(attention.double(), value.double(), NEIGHBOURHOODS[n])
    assert out.shape == (2, 7, 5 * c, 6 * c) and out.is_contiguous()
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(resized, bilinear_resize(out, (11, 9)))


def test_switched_off_runs_the_plain_sequence(monkeypatch):
    attention, value = _inputs(1, 40, 48, 40, 2, 17, seed=5)
    monkeypatch.setattr(attender_module, "_nearest_up", None)  # the tile loop would need it
    monkeypatch.setattr(attender_module, "_attend_gathered", None)
    with torch.inference_mode(), fast_paths.fast_paths(False):
        out = local_attend(attention, value, NEIGHBOURHOODS[17], output_size=(70, 60))
    expected = direct_local_attend(attention, value, NEIGHBOURHOODS[17])
    torch.testing.assert_close(out, bilinear_resize(expected, (70, 60)), rtol=1e-5, atol=1e-5)


def test_default_tiles_at_library_sizes():
    attention, value = _inputs(1, 40, 48, 40, 2, 17, seed=3)  # several row stripes and channel chunks
    out = local_attend(attention, value, NEIGHBOURHOODS[17])
    torch.testing.assert_close(out, direct_local_attend(attention, value, NEIGHBOURHOODS[17]), rtol=1e-5, atol=1e-5)


def test_channels_last_and_strided_inputs(small_tiles):
    attention, value = _inputs(2, 6, 4, 5, 2, 17, seed=4)
    expected = direct_local_attend(attention, value, NEIGHBOURHOODS[17])
    value_cl = value.contiguous(memory_format=torch.channels_last)
    attention_cl = attention.contiguous(memory_format=torch.channels_last)
    for a, v in ((attention, value_cl), (attention_cl, value_cl), (attention_cl, value)):
        torch.testing.assert_close(local_attend(a, v, NEIGHBOURHOODS[17]), expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(local_attend_fused(a, v, NEIGHBOURHOODS[17]), expected, rtol=1e-5, atol=1e-5)
    strided = torch.randn(2, 6, 4, 10)[..., ::2]  # a non-contiguous view
    torch.testing.assert_close(local_attend(attention, strided, NEIGHBOURHOODS[17]),
                               direct_local_attend(attention, strided.contiguous(), NEIGHBOURHOODS[17]))


@pytest.mark.parametrize("n", [5, 17, 25])
def test_fused_formulation_matches_direct(n):
    attention, value = _inputs(2, 5, 4, 3, 2, n, seed=n)
    out = local_attend_fused(attention, value, NEIGHBOURHOODS[n])
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, direct_local_attend(attention, value, NEIGHBOURHOODS[n]), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype, tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3)])
def test_low_precision_paths(dtype, tol, small_tiles):
    attention, value = _inputs(1, 6, 6, 5, 2, 17, seed=5, dtype=dtype)
    expected = direct_local_attend(attention.double(), value.double(), NEIGHBOURHOODS[17])  # same inputs, exact sum
    for path in (local_attend, local_attend_fused):
        out = path(attention, value, NEIGHBOURHOODS[17])
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), expected, rtol=tol, atol=tol)


def test_training_path_gradients_match_direct():
    attention, value = _inputs(1, 3, 4, 4, 2, 17, seed=6)
    grads = []
    for path in (local_attend, direct_local_attend):
        a, v = attention.clone().requires_grad_(), value.clone().requires_grad_()
        out = path(a, v, NEIGHBOURHOODS[17])
        (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
        grads.append((out.detach(), a.grad, v.grad))
    for ours, theirs in zip(*grads, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def _compile_available() -> bool:
    return hasattr(torch, "compile") and any(shutil.which(cc) for cc in ("cc", "gcc", "clang", "c++", "g++"))


@pytest.mark.skipif(not _compile_available(), reason="torch.compile needs a C++ compiler on CPU")
def test_compiled_attender_matches_direct_without_graph_breaks():
    torch._dynamo.reset()
    torch.manual_seed(7)
    attender = LocalAttender(guide_channels=20, neighbourhood_size=17)
    guide, value = torch.randn(1, 20, 8, 10), torch.randn(1, 6, 4, 5)
    compiled = torch.compile(attender, fullgraph=True, dynamic=False)  # fullgraph: any graph break raises
    with torch.inference_mode():
        out = compiled(guide, value)
        expected = direct_local_attend(attender.attention(guide), value, NEIGHBOURHOODS[17])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    trainable = value.clone().requires_grad_()  # with gradients the fused formulation is traced instead
    out = compiled(guide, trainable)
    out.sum().backward()
    torch.testing.assert_close(out.detach(), expected, rtol=1e-5, atol=1e-5)
    reference = value.clone().requires_grad_()
    direct_local_attend(attender.attention(guide).detach(), reference, NEIGHBOURHOODS[17]).sum().backward()
    torch.testing.assert_close(trainable.grad, reference.grad, rtol=1e-5, atol=1e-5)

"""LocalAttender: the paper's operator, its neighbourhoods, properties and errors."""

import pytest
import torch

from uplift_diffusion import NEIGHBOURHOODS, LocalAttender
from uplift_diffusion.attender import local_attend

SPEC_ORDER = {
    5: [(-1, 0), (0, -1), (0, 0), (0, 1), (1, 0)],
    13: [(-2, 0), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1), (0, 2), (1, -1), (1, 0), (1, 1),
         (2, 0)],
    17: [(-2, -2), (-2, 0), (-2, 2), (-1, -1), (-1, 0), (-1, 1), (0, -2), (0, -1), (0, 0), (0, 1), (0, 2), (1, -1),
         (1, 0), (1, 1), (2, -2), (2, 0), (2, 2)],
}


def direct_loop(attention, value, offsets):
    """The formula of the spec, one output pixel at a time."""
    b, c_v, h, w = value.shape
    gh, gw = attention.shape[-2:]
    c = gh // h
    out = torch.zeros(b, c_v, gh, gw, dtype=torch.float64)
    for y in range(gh):
        for x in range(gw):
            for k, (di, dj) in enumerate(offsets):
                yy = min(max(y // c + di, 0), h - 1)
                xx = min(max(x // c + dj, 0), w - 1)
                out[:, :, y, x] += attention[:, k, y, x, None].double() * value[:, :, yy, xx].double()
    return out


def test_neighbourhood_tables_follow_the_spec():
    assert sorted(NEIGHBOURHOODS) == [5, 9, 13, 17, 25]
    for n, offsets in NEIGHBOURHOODS.items():
        assert len(offsets) == n and len(set(offsets)) == n and (0, 0) in offsets
    for n, order in SPEC_ORDER.items():
        assert list(NEIGHBOURHOODS[n]) == order
    assert list(NEIGHBOURHOODS[9]) == [(i, j) for i in (-1, 0, 1) for j in (-1, 0, 1)]
    assert list(NEIGHBOURHOODS[25]) == [(i, j) for i in range(-2, 3) for j in range(-2, 3)]


@pytest.mark.parametrize("n", sorted(NEIGHBOURHOODS))
@pytest.mark.parametrize("c", [1, 2, 4])
def test_matches_direct_per_pixel_loop(n, c):
    torch.manual_seed(n * 10 + c)
    attender = LocalAttender(guide_channels=7, neighbourhood_size=n)
    guide = torch.randn(2, 7, 3 * c, 5 * c)
    value = torch.randn(2, 6, 3, 5)
    with torch.no_grad():
        out = attender(guide, value)
        expected = direct_loop(attender.attention(guide), value, NEIGHBOURHOODS[n])
    assert out.shape == (2, 6, 3 * c, 5 * c)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5)


def test_attention_is_softmax_of_conv_plus_residual():
    attender = LocalAttender(guide_channels=20, neighbourhood_size=17)
    guide = torch.randn(1, 20, 4, 4)
    logits = attender.conv1(guide) + guide[:, :17]
    torch.testing.assert_close(attender.attention(guide), torch.softmax(logits, dim=1))
    narrow = LocalAttender(guide_channels=3, neighbourhood_size=5)  # guide narrower than n: zero-padded residual
    g = torch.randn(1, 3, 2, 2)
    logits = narrow.conv1(g) + torch.cat([g, torch.zeros(1, 2, 2, 2)], dim=1)
    torch.testing.assert_close(narrow.attention(g), torch.softmax(logits, dim=1))


def test_constant_value_map_stays_constant():
    attender = LocalAttender(16, 17)
    value = torch.full((1, 5, 6, 4), 3.25)
    out = attender(torch.randn(1, 16, 12, 8), value)
    torch.testing.assert_close(out, torch.full_like(out, 3.25))


def test_output_within_neighbourhood_min_max():
    torch.manual_seed(1)
    value = torch.randn(1, 3, 5, 7)
    attender = LocalAttender(8, 17)
    out = attender(torch.randn(1, 8, 10, 14) * 5, value)
    padded = torch.nn.functional.pad(value, (2, 2, 2, 2), mode="replicate")
    windows = padded.unfold(2, 5, 1).unfold(3, 5, 1)  # [1, 3, 5, 7, 5, 5]
    lo = windows.amin(dim=(-1, -2)).repeat_interleave(2, -2).repeat_interleave(2, -1)
    hi = windows.amax(dim=(-1, -2)).repeat_interleave(2, -2).repeat_interleave(2, -1)
    assert (out >= lo - 1e-6).all() and (out <= hi + 1e-6).all()


def test_rectangular_maps_and_c1():
    attender = LocalAttender(8, 9)
    assert attender(torch.randn(2, 8, 3, 11), torch.randn(2, 4, 3, 11)).shape == (2, 4, 3, 11)
    assert attender(torch.randn(2, 8, 9, 33), torch.randn(2, 4, 3, 11)).shape == (2, 4, 9, 33)


def test_low_precision_close_to_float32():
    torch.manual_seed(2)
    attn = torch.softmax(torch.randn(1, 17, 8, 8), 1)
    value = torch.randn(1, 4, 4, 4)
    ref = local_attend(attn, value, NEIGHBOURHOODS[17])
    for dtype in (torch.bfloat16, torch.float16):
        out = local_attend(attn.to(dtype), value.to(dtype), NEIGHBOURHOODS[17])
        assert out.dtype == dtype
        torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.parametrize("n", [0, 4, 16, 49])
def test_unknown_neighbourhood_size(n):
    with pytest.raises(ValueError, match="neighbourhood size"):
        LocalAttender(8, n)


@pytest.mark.parametrize("guide_size", [(6, 9), (7, 8), (8, 12), (2, 4)])
def test_guide_not_integer_multiple_of_value(guide_size):
    with pytest.raises(ValueError, match="integer multiple"):
        LocalAttender(8, 5)(torch.randn(1, 8, *guide_size), torch.randn(1, 4, 4, 4))

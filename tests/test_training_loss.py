"""Training objective: paper eq. 4-5 term by term, augmentation on a copy only, and a few steps that learn."""

import pytest
import torch
import torch.nn.functional as F
from training_helpers import TINY_MODEL, tiny_backbone, tiny_config

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.training.data import image_pyramid
from uplift_diffusion.training.losses import (
    PixelObjective,
    augment_features,
    edge_distance,
    loss_term_names,
    multi_depth_loss,
)


@pytest.fixture
def batch():
    torch.manual_seed(0)
    image = F.interpolate(torch.rand(2, 3, 8, 8), size=(64, 64), mode="bicubic").clamp(0, 1)  # smooth [B, 3, S, S]
    images = image_pyramid(image, 3)
    backbone = tiny_backbone()
    return images, [backbone.encode(x) for x in images]


def _model():
    torch.manual_seed(0)
    return UPLiFTModel.from_preset("tiny-vae", **TINY_MODEL)


def test_loss_terms_equal_the_paper_formula(batch):
    images, features = batch
    model = _model()
    depths = [1, 2, 3]
    loss, terms = multi_depth_loss(model, images, features, depths, generator=torch.Generator().manual_seed(3))

    # eq. 4-5 written out: depth d starts from F at 1/2**d, step k is compared with F at 1/2**(d-k).
    generator = torch.Generator().manual_seed(3)
    expected_total = 0.0
    for d in depths:
        x = features[d]
        encoded = model.encode_image(images[d])
        for k in range(1, d + 1):
            x = model.upscale_step(x, encoded, generator)
            assert x.shape == features[d - k].shape
            term = ((x - features[d - k]) ** 2).mean()
            torch.testing.assert_close(terms[f"d{d}_k{k}"], term.detach())
            expected_total = expected_total + term
    assert sorted(terms) == ["d1_k1", "d2_k1", "d2_k2", "d3_k1", "d3_k2", "d3_k3"]
    torch.testing.assert_close(loss, expected_total)


def test_augmentation_touches_only_a_copy_of_the_input(batch):
    images, features = batch
    originals = [f.clone() for f in features]
    model = _model()
    clean, _ = multi_depth_loss(model, images, features, [1, 2], noise_sigma=0.0,
                                generator=torch.Generator().manual_seed(1))
    noisy, _ = multi_depth_loss(model, images, features, [1, 2], noise_sigma=1.0,
                                generator=torch.Generator().manual_seed(1))
    for before, after in zip(originals, features, strict=True):
        assert torch.equal(before, after)  # targets (and the inputs of other depths) are untouched
    assert not torch.allclose(clean, noisy)  # but the noise did reach the input

    x = features[1]
    augmented = augment_features(x, 0.5, torch.Generator().manual_seed(0))
    assert augmented is not x and torch.equal(x, originals[1])
    assert 0.3 < (augmented - x).std() < 0.7
    copy = augment_features(x, 0.0)
    assert copy is not x and torch.equal(copy, x)


def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(batch):
    images, features = batch
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for step in range(25):
        loss, _ = multi_depth_loss(model, images, features, [1, 2, 3], generator=torch.Generator().manual_seed(step))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses


def test_depths_deeper_than_the_pyramid_are_refused(batch):
    images, features = batch
    with pytest.raises(ValueError, match="pyramid levels"):
        multi_depth_loss(_model(), images[:2], features[:2], [1, 2, 3])


# ---------------------------------------------------------------- the decoder-aware pixel term (beyond the paper)
def _nearest_decode(patch: int):
    """A stand-in 'decoder': the first 3 latent channels, nearest-upsampled ``patch`` times (exactly invertible)."""
    return lambda z: z[:, :3].repeat_interleave(patch, -1).repeat_interleave(patch, -2)


def test_pixel_term_compares_the_decoded_last_step_with_the_full_resolution_image(batch):
    images, features = batch
    model = _model()
    pixel = PixelObjective(_nearest_decode(8), patch_size=8, weight=2.0, kind="l1", edge_weight=0.5)
    loss, terms = multi_depth_loss(model, images, features, [1, 2], latent_weight=0.5, pixel=pixel,
                                   generator=torch.Generator().manual_seed(3))
    assert list(terms) == loss_term_names([1, 2], pixel) == ["d1_k1", "d1_px", "d1_edge", "d2_k1", "d2_k2", "d2_px",
                                                            "d2_edge"]
    generator = torch.Generator().manual_seed(3)
    expected = 0.0
    for d in (1, 2):
        steps = model(images[d], features[d], iterations=d, return_all_steps=True, generator=generator)
        for k, out in enumerate(steps, start=1):
            expected = expected + 0.5 * ((out - features[d - k]) ** 2).mean()
        pixels = _nearest_decode(8)(steps[-1])
        px = 2.0 * (pixels - images[0]).abs().mean()
        torch.testing.assert_close(terms[f"d{d}_px"], px.detach())
        expected = expected + px + 0.5 * edge_distance(pixels, images[0])
    torch.testing.assert_close(loss, expected)


def test_pixel_window_decodes_one_window_and_skips_its_inner_margin():
    seen = []

    def decode(z):
        seen.append(tuple(z.shape[-2:]))
        return _nearest_decode(2)(z)

    features = torch.zeros(1, 3, 16, 16, requires_grad=True)
    target = torch.zeros(1, 3, 32, 32)
    target[..., 24:28, 24:28] = 1.0  # differs from the zero prediction in a 4x4-pixel square near a corner only
    pixel = PixelObjective(decode, patch_size=2, window=6, margin=1)
    hits = set()
    for seed in range(40):
        value = pixel(features, target, torch.Generator().manual_seed(seed))["px"]
        hits.add(round(value.item(), 6))
    assert set(seen) == {(6, 6)}  # only the window is decoded
    # the compared part is 4 to 5 latents a side (8 to 10 pixels): the square is inside it, partly, or not at all
    assert 0.0 in hits and max(hits) <= 16 / 64 + 1e-6 and len(hits) > 2
    whole = PixelObjective(decode, patch_size=2)(features, target)["px"]
    torch.testing.assert_close(whole, torch.tensor(16 / 1024))


def test_pixel_term_trains_the_model_through_a_frozen_decoder(batch):
    images, features = batch
    backbone = tiny_backbone()
    model = _model()
    pixel = PixelObjective(backbone.decode_differentiable, patch_size=8, window=4, margin=1)
    loss, _ = multi_depth_loss(model, images, features, [1, 2], pixel=pixel, latent_weight=0.0,
                               generator=torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in backbone.parameters())  # the decoder stays frozen
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize("loss, match", [
    ({"pixel_loss": "l3", "pixel_weight": 1.0}, "pixel_loss"),
    ({"edge_weight": 1.0}, "edge_weight needs"),
    ({"latent_weight": 0.0}, "nothing to train"),
    ({"pixel_weight": 1.0, "pixel_depths": [3]}, "subset"),
    ({"pixel_weight": 1.0, "pixel_window": 4, "pixel_margin": 2}, "twice"),
    ({"pixel_weight": -1.0}, "pixel_weight must be >= 0"),
])
def test_pixel_loss_settings_are_validated(tmp_path, loss, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, tmp_path, loss={"depths": [1, 2], **loss})


def test_detail_correction_in_the_loss_returns_the_bicubic_input_for_a_flat_decode(batch):
    images, _ = batch
    flat = torch.full((2, 3, 8, 8), 0.3)  # decodes to a constant image: no detail above the blur's band
    pixel = PixelObjective(_nearest_decode(8), patch_size=8, color_correction="detail", detail_sigma=0.5)
    value = pixel(flat, images[0], low_res=images[2])["px"]
    bicubic = torch.nn.functional.interpolate(images[2], size=(64, 64), mode="bicubic", align_corners=False)
    torch.testing.assert_close(value, (bicubic - images[0]).abs().mean(), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="low-res"):
        pixel(flat, images[0])


# ---------------------------------------------------------------- cheaper steps and the latent-grid term
def test_grid_term_charges_a_mesh_on_the_latent_grid_and_not_a_blur():
    from uplift_diffusion.training.losses import grid_excess

    torch.manual_seed(0)
    target = F.interpolate(torch.rand(2, 3, 8, 8), size=(64, 64), mode="bicubic").clamp(0, 1)
    mesh = target.clone()
    mesh[..., ::8, :] += 0.1  # a line every 8 pixels: the decoded look of an imperfect latent map
    mesh[..., :, ::8] += 0.1
    blurred = F.avg_pool2d(target, 3, stride=1, padding=1, count_include_pad=False)
    assert grid_excess(target, target) == 0
    assert grid_excess(mesh, target) > 20 * grid_excess(blurred, target)


def test_cheaper_pixel_term_decodes_fewer_items_and_one_depth_per_step(batch):
    images, features = batch
    model = _model()
    seen = []

    def decode(z):
        seen.append(z.shape[0])
        return _nearest_decode(8)(z)

    pixel = PixelObjective(decode, patch_size=8, items=1, schedule="cycle", grid_weight=1.0)
    for step in range(4):
        loss, terms = multi_depth_loss(model, images, features, [1, 2], pixel=pixel, step=step,
                                       generator=torch.Generator().manual_seed(0))
        active = [d for d in (1, 2) if terms[f"d{d}_px"] > 0]
        assert active == [(1, 2)[step % 2]]  # one depth per step, in turn
        assert terms[f"d{active[0]}_grid"] >= 0 and f"d{3 - active[0]}_grid" in terms
    assert seen == [1, 1, 1, 1]  # one item of the batch of two decoded, once per step


def test_a_decoded_guide_replaces_the_photo_as_the_models_image(batch):
    images, features = batch
    model = _model()
    other = [None] + [x.flip(-1) for x in images[1:]]
    plain, _ = multi_depth_loss(model, images, features, [1], generator=torch.Generator().manual_seed(0))
    guided, _ = multi_depth_loss(model, images, features, [1], generator=torch.Generator().manual_seed(0),
                                 guides=other)
    expected = model(other[1], features[1], iterations=1, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(guided, ((expected - features[0]) ** 2).mean())
    assert not torch.equal(plain, guided)


@pytest.mark.parametrize("loss, match", [
    ({"grid_weight": 1.0}, "grid_weight needs"),
    ({"pixel_weight": 1.0, "pixel_items": 0}, "pixel_items"),
    ({"pixel_weight": 1.0, "pixel_depth_schedule": "sometimes"}, "pixel_depth_schedule"),
    ({"guide": "dream"}, "guide"),
])
def test_cheaper_step_and_guide_settings_are_validated(tmp_path, loss, match):
    with pytest.raises(ValueError, match=match):
        tiny_config(tmp_path, tmp_path, loss={"depths": [1, 2], **loss})

"""Training objective: paper eq. 4-5 term by term, augmentation on a copy only, and a few steps that learn."""

import pytest
import torch
import torch.nn.functional as F
from training_helpers import TINY_MODEL, tiny_backbone

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.training.data import image_pyramid
from uplift_diffusion.training.losses import augment_features, multi_depth_loss


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

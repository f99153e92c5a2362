"""identity_refiner_init: the refiner starts as the identity on the Local Attender output, and still learns."""

import torch

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.training.init import identity_refiner_init


def test_identity_refiner_init_passes_the_attender_output_through():
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=0).eval()
    identity_refiner_init(model)
    no_refiner = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=0, refiner_blocks=None).eval()
    missing, unexpected = no_refiner.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("refiner") for k in unexpected)
    image, features = torch.rand(2, 3, 32, 32), torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(model(image, features, iterations=2), no_refiner(image, features, iterations=2))

    loss = model(image, features).pow(2).mean()
    loss.backward()
    assert model.refiner.blocks[0].conv[-1].weight.grad.abs().sum() > 0  # the zeroed layers still learn

    plain = UPLiFTModel.from_preset("dinov2-s14")
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    identity_refiner_init(plain)  # no refiner: nothing changes
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())

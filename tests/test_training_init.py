"""identity_refiner_init: the refiner starts as the identity on the Local Attender output, and still learns."""

import json

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


def test_grow_model_adds_identity_blocks_to_a_trained_model_and_refuses_other_changes():
    import pytest

    from uplift_diffusion.training.init import grow_model

    torch.manual_seed(0)
    trained = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=0).eval()
    for p in trained.parameters():  # a "trained" model: no zero layers anywhere
        p.data.normal_(0, 0.1)
    blocks = trained.config.refiner_blocks["num_blocks"]
    grown = grow_model(trained, {"refiner_blocks": {"num_blocks": blocks + 2}}).eval()
    assert len(grown.refiner.blocks) == blocks + 2 and grown.config.refiner_blocks["num_blocks"] == blocks + 2
    image, features = torch.rand(2, 3, 32, 32), torch.randn(2, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(grown(image, features, iterations=2), trained(image, features, iterations=2))
    grown(image, features).pow(2).mean().backward()
    assert grown.refiner.blocks[-1].conv[-1].weight.grad.abs().sum() > 0  # the new blocks learn

    with pytest.raises(ValueError, match="can only raise num_blocks"):
        grow_model(trained, {"refiner_blocks": {"out_channels": 256}})
    with pytest.raises(ValueError, match="can only raise num_blocks"):
        grow_model(trained, {"refiner_blocks": {"num_blocks": blocks - 1}})
    with pytest.raises(ValueError, match="can only grow"):
        grow_model(trained, {"in_channels": 8})

    # a continuation recipe extends the recipe that made the model: overrides that repeat it are no change
    same = {k: trained.config[k] for k in ("in_channels", "encoder_blocks", "norm_type")}
    again = grow_model(trained, json.loads(json.dumps(same))).eval()
    with torch.no_grad():
        torch.testing.assert_close(again(image, features, iterations=2), trained(image, features, iterations=2))


def test_grow_model_adds_guide_conditions_that_start_ignored_and_refuses_reordering_them():
    import pytest

    from uplift_diffusion.training.init import grow_model

    torch.manual_seed(0)
    trained = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=0).eval()
    for p in trained.parameters():
        p.data.normal_(0, 0.1)
    told = grow_model(trained, {"guide_conditions": ["decoded"]}).eval()
    grown = grow_model(told, {"guide_conditions": ["decoded", "sharpness"]}).eval()
    assert grown.config.guide_conditions == ["decoded", "sharpness"] and grown.guide_channels == 5
    image, features = torch.rand(2, 3, 32, 32), torch.randn(2, 4, 4, 4)
    guide = grown.normalize_image(image, decoded=torch.tensor([True, False]))  # [2, 5, 32, 32]
    assert guide.shape == (2, 5, 32, 32) and guide[:, 3].flatten(1).amax(1).tolist() == [1.0, 0.0]
    with torch.no_grad():
        torch.testing.assert_close(grown(guide, features, iterations=2), trained(image, features, iterations=2))
    grown(guide, features).pow(2).mean().backward()
    first = grown.encoder.block_0.blocks[0].conv[0].weight.grad  # [C_out, 5, 3, 3]
    assert first[:, 3:].abs().sum() > 0  # the new inputs learn

    with pytest.raises(ValueError, match="can only add conditions after"):
        grow_model(grown, {"guide_conditions": ["sharpness", "decoded"]})
    # a scale comes with the first conditions (it starts at zero weights too); a trained condition's scale stays
    scaled = grow_model(trained, {"guide_conditions": ["decoded"], "guide_condition_scale": 8.0}).eval()
    with torch.no_grad():
        torch.testing.assert_close(scaled(scaled.normalize_image(image, True), features, iterations=2),
                                   trained(image, features, iterations=2))
    with pytest.raises(ValueError, match="only be set for a model without guide conditions"):
        grow_model(scaled, {"guide_condition_scale": 1.0})
    with pytest.raises(ValueError, match="RGB plus the guide conditions decoded, sharpness"):
        grown(image, features)


def test_a_training_config_grows_its_initial_model(tmp_path):
    """``model.init_from`` + ``model.overrides.refiner_blocks.num_blocks`` (the built-in recipe's stage 2): the run
    starts from the saved model, deeper, computing exactly what it computed."""
    from uplift_diffusion.training.config import TrainConfig
    from uplift_diffusion.training.trainer import build_model

    torch.manual_seed(0)
    saved = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=0).eval()
    saved.save_pretrained(tmp_path / "stage1")
    blocks = saved.config.refiner_blocks["num_blocks"]
    config = TrainConfig.from_dict({"model": {"init_from": str(tmp_path / "stage1"),
                                              "overrides": {"refiner_blocks": {"num_blocks": blocks + 1}}}})
    grown = build_model(config).eval()
    assert grown.config.refiner_blocks["num_blocks"] == blocks + 1
    image, features = torch.rand(1, 3, 32, 32), torch.randn(1, 4, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(grown(image, features, iterations=2), saved(image, features, iterations=2))

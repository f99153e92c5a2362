"""UPLiFTModel: presets, configuration round trip, forward behaviour, determinism, precision and errors."""

import pytest
import torch

from uplift_diffusion import UPLiFTModel


@pytest.mark.parametrize(
    "preset, total, parts",
    [
        ("sd15-vae", 53_487_445, {"encoder": 10_631_488, "decoder": 11_332_608, "attender": 8_721,
                                   "refiner": 31_512_576, "refiner_out": 2_052}),
        ("dinov2-s14", 789_521, {"encoder": 283_904, "decoder": 504_512, "attender": 1_105}),
        ("dinov3-splus16", 789_521, {"encoder": 283_904, "decoder": 504_512, "attender": 1_105}),
    ],
)
def test_preset_parameter_counts(preset, total, parts):
    with torch.device("meta"):
        model = UPLiFTModel.from_preset(preset)
    assert sum(p.numel() for p in model.parameters()) == total
    assert model.num_parameters_by_part == parts


def test_preset_overrides_and_unknown_preset():
    model = UPLiFTModel.from_preset("tiny-vae", neighbourhood_size=9, norm_type="batch", refiner_blocks=None)
    assert model.attender.neighbourhood_size == 9 and model.refiner is None
    with pytest.raises(ValueError, match="unknown UPLiFT preset"):
        UPLiFTModel.from_preset("sdxl-vae")


def _public(config):
    return {k: v for k, v in config.items() if not k.startswith("_")}


@pytest.mark.parametrize("overrides", [{}, {"norm_type": "batch", "noise_channels": 0, "refiner_blocks": None},
                                       {"neighbourhood_size": 25, "patch_size": 14, "image_normalization": "imagenet"}])
def test_save_pretrained_round_trip(tmp_path, overrides):
    model = UPLiFTModel.from_preset("tiny-vae", **overrides).eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    loaded = UPLiFTModel.from_pretrained(tmp_path).eval()
    assert _public(loaded.config) == _public(model.config)
    p = model.config.patch_size
    image, feats = torch.rand(1, 3, 3 * p, 5 * p), torch.randn(1, 4, 3, 5)
    with torch.no_grad():
        a = model(image, feats, iterations=2, generator=torch.Generator().manual_seed(3))
        b = loaded(image, feats, iterations=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_output_shapes_all_steps_and_output_size(tiny_model):
    image, feats = torch.rand(2, 3, 24, 40), torch.randn(2, 4, 3, 5)
    with torch.no_grad():
        steps = tiny_model(image, feats, iterations=3, return_all_steps=True)
        resized = tiny_model(image, feats, iterations=2, output_size=(20, 30))
        square = tiny_model(image, feats, iterations=1, output_size=9)
    assert [tuple(s.shape) for s in steps] == [(2, 4, 6, 10), (2, 4, 12, 20), (2, 4, 24, 40)]
    assert resized.shape == (2, 4, 20, 30) and square.shape == (2, 4, 9, 9)


def test_generator_determinism_and_global_seed(tiny_model):
    image, feats = torch.rand(1, 3, 16, 24), torch.randn(1, 4, 2, 3)
    with torch.no_grad():
        a = tiny_model(image, feats, iterations=2, generator=torch.Generator().manual_seed(0))
        torch.manual_seed(123)  # a generator makes the global RNG irrelevant
        b = tiny_model(image, feats, iterations=2, generator=torch.Generator().manual_seed(0))
        c = tiny_model(image, feats, iterations=2, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(7)
        d = tiny_model(image, feats, iterations=2)
        torch.manual_seed(7)
        e = tiny_model(image, feats, iterations=2)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)  # the noise channels do matter
    torch.testing.assert_close(d, e, rtol=0, atol=0)


def test_encoder_runs_once_per_forward(tiny_model):
    calls = []
    handle = tiny_model.encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        tiny_model(torch.rand(1, 3, 16, 16), torch.randn(1, 4, 2, 2), iterations=3)
    handle.remove()
    assert len(calls) == 1


def test_patch14_prescales_image_to_16_grid():
    model = UPLiFTModel.from_preset("dinov2-s14", encoder_blocks=[{"out_channels": 4, "num_blocks": 1,
                                    "num_convs": 1}] * 2, decoder_blocks=[{"out_channels": 8, "num_blocks": 1,
                                    "num_convs": 2}] * 2, in_channels=6).eval()
    seen = []
    handle = model.encoder.register_forward_hook(lambda m, inp, out: seen.append(tuple(inp[0].shape[-2:])))
    with torch.no_grad():
        out = model(torch.randn(1, 3, 28, 42), torch.randn(1, 6, 2, 3), iterations=4, output_size=(28, 42))
    handle.remove()
    assert seen == [(32, 48)] and out.shape == (1, 6, 28, 42)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision(dtype):
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", noise_channels=0).eval()
    image, feats = torch.rand(1, 3, 24, 32), torch.randn(1, 4, 3, 4)
    with torch.no_grad():
        ref = model(image, feats, iterations=2)
        out = model.to(dtype)(image.to(dtype), feats.to(dtype), iterations=2, output_size=(10, 14))
        full = model(image.to(dtype), feats.to(dtype), iterations=2)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert (full.float() - ref).abs().max() / ref.abs().max() < 0.1
    # LayerNorm statistics in float32: large activations do not overflow in fp16.
    big = model(image.to(dtype), feats.to(dtype) * 200, iterations=1)
    assert torch.isfinite(big).all()


def test_no_grad_keeps_no_graph(tiny_model):
    with torch.no_grad():
        out = tiny_model(torch.rand(1, 3, 16, 16), torch.randn(1, 4, 2, 2), iterations=2)
    assert out.grad_fn is None and not out.requires_grad
    out = tiny_model(torch.rand(1, 3, 16, 16), torch.randn(1, 4, 2, 2), iterations=2)
    out.sum().backward()
    assert tiny_model.attender.conv1.weight.grad is not None


# ---------------------------------------------------------------- errors a user gets
def _call(model, image_shape=(1, 3, 16, 24), feat_shape=(1, 4, 2, 3), **kwargs):
    return model(torch.rand(image_shape), torch.randn(feat_shape), **kwargs)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(feat_shape=(1, 384, 2, 3)), "384 channels"),
        (dict(image_shape=(1, 4, 16, 24)), "4 channels, expected 3"),
        (dict(image_shape=(1, 3, 17, 24)), "does not match features 2x3 with patch size 8"),
        (dict(image_shape=(1, 3, 24, 16)), "does not match"),
        (dict(image_shape=(2, 3, 16, 24)), "batch size"),
        (dict(feat_shape=(4, 2, 3)), "4-D"),
        (dict(iterations=0), "iterations must be an integer >= 1"),
        (dict(iterations=-2), "iterations"),
        (dict(iterations=1.5), "iterations"),
        (dict(output_size=(0, 4)), "output_size"),
    ],
)
def test_clear_errors(tiny_model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        _call(tiny_model, **kwargs)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_features_are_refused(tiny_model, bad):
    feats = torch.randn(1, 4, 2, 3)
    feats[0, 1, 1, 1] = bad
    with pytest.raises(ValueError, match="NaN or inf"):
        tiny_model(torch.rand(1, 3, 16, 24), feats)


def test_invalid_configs():
    with pytest.raises(ValueError, match="neighbourhood size"):
        UPLiFTModel.from_preset("tiny-vae", neighbourhood_size=11)
    with pytest.raises(ValueError, match="norm_type"):
        UPLiFTModel.from_preset("tiny-vae", norm_type="group")
    with pytest.raises(ValueError, match="decoder_blocks"):
        UPLiFTModel.from_preset("tiny-vae", decoder_blocks=[{"out_channels": 8, "num_blocks": 1, "num_convs": 1}])

"""ViTBackbone and UPLiFTFeatureExtractor: shapes for patch 14 / 16, input kinds, batching, output sizes, loading."""

import warnings

import numpy as np
import pytest
import timm
import torch
from features_helpers import WIDTH, tiny_extractor, tiny_upsampler, tiny_vit_module
from PIL import Image

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.backbones.vit import ViTBackbone
from uplift_diffusion.features import UPLiFTFeatureExtractor
from uplift_diffusion.reference import to_reference_state_dict

MEAN = torch.tensor((0.485, 0.456, 0.406))[:, None, None]
STD = torch.tensor((0.229, 0.224, 0.225))[:, None, None]


def _image(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(3, height, width, generator=generator)


@pytest.mark.parametrize("patch", [14, 16])
def test_vit_backbone_returns_normed_patch_tokens(patch):
    module = tiny_vit_module(patch, reg_tokens=2) if patch == 14 else tiny_vit_module(patch)
    vit = ViTBackbone(module)
    assert (vit.patch_size, vit.embed_dim) == (patch, WIDTH)
    x = torch.randn(2, 3, 3 * patch, 5 * patch)
    features = vit(x)
    assert features.shape == (2, WIDTH, 3, 5)
    tokens = module.forward_features(x)  # [B, prefix + 15, C], after the final norm
    prefix = module.num_prefix_tokens
    assert prefix == (3 if patch == 14 else 5)  # class + registers are dropped
    expected = tokens[:, prefix:].reshape(2, 3, 5, WIDTH).permute(0, 3, 1, 2)
    torch.testing.assert_close(features, expected)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        vit(torch.randn(1, 3, 3 * patch + 1, 5 * patch))


def test_vit_backbone_by_name_reads_patch_and_width():
    vit = ViTBackbone("vit_small_patch14_dinov2", depth=1, embed_dim=32, num_heads=2, img_size=56)
    assert (vit.patch_size, vit.embed_dim) == (14, 32)
    assert vit(torch.randn(1, 3, 70, 42)).shape == (1, 32, 5, 3)  # dynamic image size
    fixed = ViTBackbone(timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, depth=1,
                                          embed_dim=16, num_heads=2))
    with pytest.raises(ValueError, match="dynamic_img_size"):
        fixed(torch.randn(1, 3, 42, 42))
    with pytest.raises(TypeError, match="not a timm Vision Transformer"):
        ViTBackbone(torch.nn.Conv2d(3, 3, 1))


@pytest.mark.parametrize("patch", [14, 16])
def test_extractor_matches_manual_pipeline_and_shapes(patch):
    extractor = tiny_extractor(patch)
    image = _image(3 * patch, 4 * patch)
    features, backbone = extractor(image, return_backbone=True)
    assert features.shape == (1, WIDTH, 3 * patch, 4 * patch)  # pixel-dense at the image size
    assert backbone.shape == (1, WIDTH, 3, 4)
    # The same computation by hand: ImageNet normalisation, patch tokens, UPLiFT with output_size.
    normalised = ((image - MEAN) / STD)[None]
    tokens = extractor.backbone.model.forward_features(normalised)[:, extractor.backbone.num_prefix_tokens:]
    manual_backbone = tokens.transpose(1, 2).reshape(1, WIDTH, 3, 4)
    torch.testing.assert_close(backbone, manual_backbone)
    manual = extractor.upsampler(normalised, manual_backbone, iterations=4, output_size=(3 * patch, 4 * patch))
    torch.testing.assert_close(features, manual)

    steps = extractor(image, iterations=3, output_size=None, return_all_steps=True)
    assert [tuple(s.shape[-2:]) for s in steps] == [(6, 8), (12, 16), (24, 32)]
    assert extractor(image, iterations=2, output_size=(20, 30)).shape == (1, WIDTH, 20, 30)
    assert extractor(image, iterations=1, output_size=10).shape == (1, WIDTH, 10, 10)


def test_patch14_encoder_sees_the_16_pixel_grid():
    extractor = tiny_extractor(14)
    seen = []
    hook = extractor.upsampler.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[-2:]))
    native = extractor(_image(28, 42), output_size=None)
    hook.remove()
    assert tuple(seen[0]) == (32, 48)  # 28 * 16 // 14, 42 * 16 // 14
    assert native.shape[-2:] == (32, 48)  # 4 steps: 16x the 2x3 token grid = 16/14 of the image


def test_input_kinds_and_batching_agree():
    extractor = tiny_extractor(16)

    def extract(images):
        return extractor(images, iterations=2)

    a, b = _image(32, 48, seed=1), _image(32, 48, seed=2)
    # Quantise to uint8 so that PIL / numpy / tensor inputs hold exactly the same pixels.
    a8, b8 = [(x * 255).round().to(torch.uint8) for x in (a, b)]
    reference = extract(a8.float() / 255)
    pil = Image.fromarray(a8.permute(1, 2, 0).numpy())
    for same in (pil, a8.permute(1, 2, 0).numpy(), a8.permute(1, 2, 0).numpy() / 255.0, a8, [pil]):
        torch.testing.assert_close(extract(same), reference)
    batched = extract([pil, Image.fromarray(b8.permute(1, 2, 0).numpy())])
    assert batched.shape == (2, WIDTH, 32, 48)
    torch.testing.assert_close(batched[:1], reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched[1:], extract(b8.float() / 255), atol=1e-5, rtol=1e-5)
    stacked = extract(torch.stack([a8, b8]))
    torch.testing.assert_close(stacked, batched)


def test_non_multiple_size_resizes_with_one_warning():
    extractor = tiny_extractor(14)
    image = _image(37, 50)
    with pytest.warns(UserWarning, match="not a multiple of the backbone patch 14") as record:
        features, backbone = extractor(image, return_backbone=True)
    assert len(record) == 1
    assert features.shape[-2:] == (37, 50)  # "image" = the size as given
    assert backbone.shape[-2:] == (2, 3)  # 28 x 42 after the resize
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        extractor(image)  # warned once only
    with pytest.raises(ValueError, match="smaller than one 14x14 patch"):
        extractor(_image(10, 50))


def test_clear_errors():
    extractor = tiny_extractor(16)
    with pytest.raises(ValueError, match=r"RGB in \[0, 1\]"):
        extractor(torch.randn(3, 32, 32) * 3)
    with pytest.raises(ValueError, match="share their size"):
        extractor([_image(32, 32), _image(32, 48)])
    with pytest.raises(ValueError, match="output_size"):
        extractor(_image(32, 32), output_size="big")
    with pytest.raises(TypeError, match="PIL images, numpy arrays or torch tensors"):
        extractor("image.png")
    with pytest.raises(ValueError, match="does not fit the backbone"):
        UPLiFTFeatureExtractor(extractor.backbone, tiny_upsampler(16, channels=WIDTH + 1))
    with pytest.raises(ValueError, match="does not fit the backbone"):
        UPLiFTFeatureExtractor(extractor.backbone, tiny_upsampler(14))
    with pytest.raises(ValueError, match="ImageNet-normalised"):
        UPLiFTFeatureExtractor(extractor.backbone, UPLiFTModel.from_preset("tiny-vae", in_channels=WIDTH,
                                                                          patch_size=16))


@pytest.fixture(scope="module")
def dinov2_files(tmp_path_factory):
    """Full-size dinov2-s14 architecture files with random weights, laid out as a user would download them."""
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("dinov2")
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, dynamic_img_size=True)
    vit.eval()
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, folder / "model.safetensors")
    upsampler = UPLiFTModel.from_preset("dinov2-s14").eval()
    save_file(to_reference_state_dict(upsampler), folder / "uplift_dinov2-s14.safetensors")
    return folder, vit, upsampler


def test_from_pretrained_with_local_files(dinov2_files):
    folder, vit, upsampler = dinov2_files
    extractor = UPLiFTFeatureExtractor.from_pretrained("dinov2-s14", backbone=folder / "model.safetensors",
                                                       upsampler=folder / "uplift_dinov2-s14.safetensors")
    assert (extractor.patch_size, extractor.feature_dim) == (14, 384)
    image = _image(28, 42)
    features, backbone = extractor(image, return_backbone=True)
    assert features.shape == (1, 384, 28, 42)
    normalised = ((image - MEAN) / STD)[None]
    expected = vit.forward_features(normalised)[:, 1:].transpose(1, 2).reshape(1, 384, 2, 3)
    torch.testing.assert_close(backbone, expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features, upsampler(normalised, expected, iterations=4, output_size=(28, 42)),
                               atol=1e-5, rtol=1e-5)


def test_from_pretrained_offline_errors_name_what_to_supply(dinov2_files, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder, _, _ = dinov2_files
    with pytest.raises(OSError, match="uplift_dinov2-s14.safetensors.*upsampler=PATH"):
        UPLiFTFeatureExtractor.from_pretrained("dinov2-s14", backbone=folder / "model.safetensors")
    with pytest.raises(OSError, match=r"timm/vit_small_patch14_dinov2.lvd142m.*weights="):
        UPLiFTFeatureExtractor.from_pretrained("dinov2-s14")
    with pytest.raises(FileNotFoundError, match="model.safetensors of Hub repo"):
        UPLiFTFeatureExtractor.from_pretrained("dinov2-s14", backbone=folder / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown feature backbone"):
        UPLiFTFeatureExtractor.from_pretrained("dinov5")


def test_backbone_weights_must_fit(tmp_path):
    from safetensors.torch import save_file

    save_file({"patch_embed.proj.weight": torch.zeros(8, 3, 14, 14)}, tmp_path / "bad.safetensors")
    with pytest.raises(ValueError, match="do not fit"):
        ViTBackbone.from_pretrained("vit_small_patch14_dinov2", weights=tmp_path / "bad.safetensors", depth=1,
                                    embed_dim=8, num_heads=2)


def test_numpy_greyscale_and_float_arrays():
    extractor = tiny_extractor(16)
    grey = np.full((32, 32), 128, dtype=np.uint8)
    assert extractor(grey).shape == (1, WIDTH, 32, 32)
    with pytest.raises(ValueError, match="channels last"):
        extractor(np.zeros((3, 32, 32), dtype=np.float32))

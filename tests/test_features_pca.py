"""Joint PCA over backbone features and every UPLiFT step; the PNG strip and the `features` command."""

import numpy as np
import pytest
import torch
from features_helpers import tiny_extractor
from PIL import Image

from uplift_diffusion.cli import main
from uplift_diffusion.features import extractor_pca_strip, fit_joint_pca, save_pca_strip


def test_joint_pca_matches_svd_of_all_pixels():
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(3, 12, generator=generator)
    maps = [torch.einsum("kc,khw->chw", basis, torch.randn(3, s, s, generator=generator) * torch.tensor(
        [3.0, 2.0, 1.0])[:, None, None]) + 0.01 * torch.randn(12, s, s, generator=generator) for s in (4, 8, 16)]
    pca = fit_joint_pca(maps)
    pixels = torch.cat([m.reshape(12, -1).T for m in maps]).double()
    centred = pixels - pixels.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    for k in range(3):
        assert abs(float(pca.components[k] @ vh[k])) == pytest.approx(1.0, abs=1e-6)
    torch.testing.assert_close(pca.mean, pixels.mean(0))
    rgb = pca.to_rgb(maps[1])
    assert rgb.shape == (3, 8, 8) and rgb.min() >= 0 and rgb.max() <= 1
    with pytest.raises(ValueError, match="same channels"):
        fit_joint_pca([maps[0], maps[1][:5]])


def test_pca_colours_are_shared_across_panels():
    """Joint: one feature gets one colour in every panel (a per-panel PCA would re-stretch the scaled copy)."""
    generator = torch.Generator().manual_seed(1)
    backbone = torch.randn(1, 8, 2, 2, generator=generator)
    same = torch.nn.functional.interpolate(backbone, scale_factor=2, mode="nearest")
    image = torch.rand(3, 8, 8, generator=generator)
    strip = np.asarray(save_pca_strip_to_array(image, backbone, [same, 0.5 * same]))
    panel = lambda i: strip[:, 8 * i:8 * (i + 1)]  # noqa: E731
    np.testing.assert_array_equal(panel(1), panel(2))  # identical features -> identical colours
    assert not np.array_equal(panel(2), panel(3))  # different features (scaled) -> different colours


def save_pca_strip_to_array(image, backbone, steps):
    from uplift_diffusion.features import pca_strip

    return pca_strip(image, backbone, steps)


@pytest.mark.parametrize("patch", [14, 16])
def test_strip_layout(tmp_path, patch):
    extractor = tiny_extractor(patch)
    height, width = 2 * patch, 3 * patch
    pixels = (torch.rand(height, width, 3, generator=torch.Generator().manual_seed(2)) * 255).to(torch.uint8)
    image = Image.fromarray(pixels.numpy())
    steps, backbone = extractor(image, iterations=3, output_size=None, return_all_steps=True, return_backbone=True)
    path = save_pca_strip(tmp_path / "strip.png", image, backbone, steps)
    written = Image.open(tmp_path / "strip.png")
    assert written.size == ((2 + 3) * width, height)  # image | backbone | 3 steps
    assert written.mode == "RGB" and np.array_equal(np.asarray(written), np.asarray(path))
    array = np.asarray(written)
    np.testing.assert_array_equal(array[:, :width], pixels.numpy())  # first panel: the image itself
    tokens = array[:, width:2 * width].reshape(2, patch, 3, patch, 3)  # backbone panel: one colour per token
    assert (tokens == tokens[:, :1, :, :1]).all()
    assert len({tuple(tokens[i, 0, j, 0]) for i in range(2) for j in range(3)}) > 1
    assert extractor_pca_strip(extractor, image, iterations=2).size == (4 * width, height)
    assert not list(tmp_path.glob(".strip*"))  # no temporary file left behind


def test_features_command_pca_and_save(tmp_path):
    """The CLI end to end, loading tiny models from local folders laid out like the published ones."""
    import json

    from features_helpers import WIDTH, tiny_upsampler, tiny_vit_module
    from safetensors.torch import load_file, save_file

    backbone_dir = tmp_path / "vit"
    backbone_dir.mkdir()
    vit = tiny_vit_module(16)
    save_file({k: v.contiguous() for k, v in vit.state_dict().items()}, backbone_dir / "model.safetensors")
    model_args = dict(depth=1, embed_dim=WIDTH, num_heads=2, img_size=64)
    (backbone_dir / "config.json").write_text(json.dumps({"architecture": "vit_small_plus_patch16_dinov3",
                                                          "model_args": model_args}))
    tiny_upsampler(16).save_pretrained(tmp_path / "upsampler")
    Image.fromarray(np.full((32, 48, 3), 100, dtype=np.uint8)).save(tmp_path / "in.png")
    out, saved = tmp_path / "pca.png", tmp_path / "f.safetensors"
    args = ["features", str(tmp_path / "in.png"), "--backbone", "dinov3-splus16", "--backbone-weights",
            str(backbone_dir), "--upsampler", str(tmp_path / "upsampler"), "--iterations", "2"]
    assert main([*args, "--pca", str(out), "--save", str(saved)]) == 0
    assert Image.open(out).size == (4 * 48, 32)
    tensors = load_file(str(saved))
    assert tensors["features"].shape == (1, WIDTH, 32, 48) and tensors["backbone"].shape == (1, WIDTH, 2, 3)
    expected, backbone = tiny_extractor(16)(Image.open(tmp_path / "in.png"), iterations=2, return_backbone=True)
    torch.testing.assert_close(tensors["backbone"], backbone)
    torch.testing.assert_close(tensors["features"], expected)
    assert main([*args, "--pca", str(out)]) == 2  # exists, no --overwrite


def test_features_command_offline_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["features", str(tmp_path / "in.png"), "--pca", str(tmp_path / "o.png"),
                 "--backbone-weights", str(tmp_path / "nope.safetensors")]) == 2
    assert "model.safetensors of Hub repo timm/vit_small_patch14_dinov2.lvd142m" in capsys.readouterr().err
    assert main(["features", str(tmp_path / "in.png")]) == 2
    assert "nothing to do" in capsys.readouterr().err


def test_offline_without_local_weights_points_to_the_flag(tmp_path, capsys, monkeypatch):
    """`features IMG --pca OUT` as in the README, offline: the advice is --backbone-weights, not a Python call."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    Image.fromarray(np.zeros((28, 28, 3), dtype=np.uint8)).save(tmp_path / "in.png")
    assert main(["features", str(tmp_path / "in.png"), "--pca", str(tmp_path / "o.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "--backbone-weights" in err and "from_pretrained" not in err, err

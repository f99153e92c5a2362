"""Training with a ViT backbone (tiny random timm DINOv2 layout): ImageNet conventions, PCA previews, export."""

import pytest
import torch
from training_helpers import tiny_config, write_images

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.training.backbones import ViTFeatureBackbone
from uplift_diffusion.training.trainer import Trainer

pytest.importorskip("timm")


def _group(c):
    return {"out_channels": c, "num_blocks": 1, "num_convs": 1}


def test_trains_a_dino_preset_on_vit_features(tmp_path):
    from uplift_diffusion.backbones.vit import ViTBackbone

    torch.manual_seed(0)
    vit = ViTBackbone("vit_small_patch14_dinov2", depth=1, embed_dim=32, num_heads=2, img_size=56)
    backbone = ViTFeatureBackbone(vit, name="tiny-dinov2")
    assert (backbone.patch_size, backbone.channels, backbone.image_normalization) == (14, 32, "imagenet")
    image = torch.rand(1, 3, 112, 112)
    mean = torch.tensor([0.485, 0.456, 0.406])[:, None, None]
    std = torch.tensor([0.229, 0.224, 0.225])[:, None, None]
    torch.testing.assert_close(backbone.encode(image), vit((image - mean) / std))

    write_images(tmp_path / "images", count=2, size=(120, 112))
    model = {"preset": "dinov2-s14", "overrides": {
        "in_channels": 32, "encoder_blocks": [_group(c) for c in (4, 4, 8, 8, 8)],
        "decoder_blocks": [_group(8), _group(8)]}}
    data = {"sources": [{"type": "folder", "path": str(tmp_path / "images")}], "crop_size": 112,
            "views_per_image": 1}
    config = tiny_config(tmp_path, tmp_path / "images", model=model, data=data, max_steps=2,
                         loss={"depths": [1, 2, 3]})
    out = Trainer(config, backbone=backbone).train()
    trained = UPLiFTModel.from_pretrained(out)
    assert trained.config.image_normalization == "imagenet" and trained.config.patch_size == 14
    assert (tmp_path / "run" / "previews" / "step-00000002.png").is_file()  # PCA maps

"""Results belong to what produced them: an eval folder records a fingerprint of every setting that changes its
images; a rerun with other settings is refused (naming what differs) or, with overwrite, regenerated."""

import json

import numpy as np
import pytest
import torch
from eval_helpers import tiny_vae
from uplift_diffusion.eval.sr import run_sr_benchmark

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.utils.errors import StaleResultsError, UserError
from uplift_diffusion.utils.fingerprint import differences, module_identity, weights_hash


def _sr(folder, out, seed=0, init_seed=0, **kwargs):
    torch.manual_seed(init_seed)
    upsampler = UPLiFTModel.from_preset("tiny-vae").eval()
    return run_sr_benchmark(folder, tiny_vae(), out, upsampler=upsampler, scale=4, size=64, limit=2, seed=seed,
                            methods=["uplift", "latent-bilinear"], **kwargs)


@pytest.mark.parametrize("change, named", [
    (dict(init_seed=1), "upsampler.weights_sha256"),  # another upsampler
    (dict(color_correction=False), "color_correction"),
    (dict(seed=5), "seed"),
])
def test_sr_rerun_with_other_settings_is_refused_then_overwritten(image_folder, tmp_path, change, named):
    out = tmp_path / "out"
    first = _sr(image_folder, out)
    with pytest.raises(StaleResultsError, match=named) as info:
        _sr(image_folder, out, **change)
    assert "--overwrite" in str(info.value) and isinstance(info.value, UserError)
    # the latent baseline does not depend on the upsampler / seed / colour correction: only UPLiFT is regenerated
    redone = _sr(image_folder, out, overwrite=True, **change)
    assert redone["metrics"]["latent-bilinear"] == first["metrics"]["latent-bilinear"]
    assert redone["metrics"]["uplift"]["psnr"] != first["metrics"]["uplift"]["psnr"]
    saved = json.loads((out / "fingerprints.json").read_text())
    assert set(saved) == {"uplift", "latent-bilinear"}
    # and the same settings resume again without complaint
    assert _sr(image_folder, out, **change)["metrics"] == redone["metrics"]


def test_an_input_replaced_under_the_same_name_is_noticed(image_folder, tmp_path):
    """Stale outputs of an image that changed on disk are never scored against the new image."""
    from PIL import Image

    out = tmp_path / "out"
    _sr(image_folder, out)
    first = sorted(image_folder.glob("img*.png"))[0]
    image = Image.open(first)
    Image.fromarray(255 - np.asarray(image)).save(first)  # same name, other content
    with pytest.raises(StaleResultsError, match=r"1 input image\(s\) changed .*00000_img0"):
        _sr(image_folder, out)
    fresh = _sr(image_folder, tmp_path / "fresh")
    assert _sr(image_folder, out, overwrite=True)["metrics"] == fresh["metrics"]


def test_images_without_a_fingerprint_are_not_trusted(image_folder, tmp_path):
    out = tmp_path / "out"
    _sr(image_folder, out)
    (out / "fingerprints.json").unlink()  # a folder written before fingerprints existed
    with pytest.raises(StaleResultsError, match="no record of the settings"):
        _sr(image_folder, out)


def test_another_vae_is_refused(image_folder, tmp_path):
    out = tmp_path / "out"
    run_sr_benchmark(image_folder, tiny_vae(), out, size=64, limit=1, methods=["latent-bilinear"])
    other = tiny_vae()
    with torch.no_grad():
        other.decoder.conv_out.bias.add_(0.1)
    with pytest.raises(StaleResultsError, match="vae.weights_sha256"):
        run_sr_benchmark(image_folder, other, out, size=64, limit=1, methods=["latent-bilinear"])


def test_weights_hash_sees_every_value_and_the_dtype():
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae")
    before = weights_hash(model)
    with torch.no_grad():
        next(iter(model.parameters())).view(-1)[-1] += 1e-6  # one value of many: a sampled hash would miss it
    assert weights_hash(model) != before
    assert module_identity(model.to(torch.bfloat16))["dtype"] == "bfloat16"
    assert "_name_or_path" not in module_identity(model)["config"]


def test_differences_name_nested_keys():
    assert differences({"a": 1, "m": {"w": "x", "n": 2}}, {"a": 1, "m": {"w": "y", "n": 2}, "b": 3}) == [
        "b: <missing> -> 3", "m.w: x -> y"]

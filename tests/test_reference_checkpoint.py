"""Loading the published checkpoint format: key layout, name mapping, preset inference, refusals."""

import pytest
import torch
from safetensors.torch import save_file

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.reference import CheckpointError, to_reference_state_dict
from uplift_diffusion.testing import KEY_FILES, read_key_file, reference_weights


@pytest.mark.parametrize("preset", sorted(KEY_FILES))
def test_key_layout_identical_to_spec(shared_dir, preset):
    with torch.device("meta"):
        model = UPLiFTModel.from_preset(preset)
    ours = [(k, tuple(v.shape)) for k, v in to_reference_state_dict(model).items()]
    spec = [(k, shape) for k, shape, _ in read_key_file(KEY_FILES[preset])]
    assert ours == spec


@pytest.fixture(scope="module")
def dino_file(tmp_path_factory, shared_dir):
    path = tmp_path_factory.mktemp("ckpt") / "weights.safetensors"
    save_file(reference_weights(KEY_FILES["dinov2-s14"]), str(path))
    return path


def test_loads_reference_layout_and_infers_preset(tmp_path, shared_dir):
    state = reference_weights(KEY_FILES["sd15-vae"])
    path = tmp_path / "uplift_sd1.5vae.safetensors"
    save_file(state, str(path))
    model = UPLiFTModel.from_reference_checkpoint(str(path))
    assert model.config.in_channels == 4 and model.config.patch_size == 8 and not model.training
    torch.testing.assert_close(model.refiner_out.weight, state["ref_outc.weight"], rtol=0, atol=0)
    torch.testing.assert_close(to_reference_state_dict(model)["encoder.block_3.blocks.1.conv.3.bias"],
                               state["encoder.block_3.blocks.1.conv.3.bias"], rtol=0, atol=0)


def test_dino_presets_told_apart_by_name_or_argument(tmp_path, dino_file):
    with pytest.raises(CheckpointError, match="pass preset"):
        UPLiFTModel.from_reference_checkpoint(str(dino_file))
    assert UPLiFTModel.from_reference_checkpoint(str(dino_file), preset="dinov3-splus16").config.patch_size == 16
    named = tmp_path / "uplift_dinov2-s14.safetensors"
    named.write_bytes(dino_file.read_bytes())
    assert UPLiFTModel.from_reference_checkpoint(str(named)).config.patch_size == 14
    # a folder holding one checkpoint works too
    assert UPLiFTModel.from_reference_checkpoint(str(tmp_path), preset="dinov2-s14").config.patch_size == 14


def test_pth_with_module_prefix_and_float_counters(tmp_path, shared_dir):
    state = {f"module.{k}": v for k, v in reference_weights(KEY_FILES["dinov2-s14"]).items()}
    path = tmp_path / "old.pth"
    torch.save({"state_dict": state}, path)
    model = UPLiFTModel.from_reference_checkpoint(str(path), preset="dinov2-s14")
    assert model.encoder.block_0.blocks[0].conv[1].num_batches_tracked.dtype == torch.int64


def test_checkpoint_for_another_preset_is_refused(dino_file):
    with pytest.raises(CheckpointError, match="checkpoint for preset 'dinov2-s14', not 'sd15-vae'"):
        UPLiFTModel.from_reference_checkpoint(str(dino_file), preset="sd15-vae")


def test_partial_and_misshaped_files_name_the_keys(tmp_path, shared_dir):
    state = reference_weights(KEY_FILES["dinov2-s14"])
    del state["attender.conv1.bias"]
    state["decoder.up_1.up.weight"] = torch.zeros(64, 64, 3, 3)
    state["extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.safetensors"
    save_file(state, str(path))
    with pytest.raises(CheckpointError) as err:
        UPLiFTModel.from_reference_checkpoint(str(path), preset="dinov2-s14")
    message = str(err.value)
    assert "missing keys: attender.conv1.bias" in message
    assert "unexpected keys: extra.weight" in message
    assert "decoder.up_1.up.weight (64, 64, 3, 3) (expected (64, 64, 2, 2))" in message


def test_corrupt_and_missing_files(tmp_path):
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00\x01not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        UPLiFTModel.from_reference_checkpoint(str(bad), preset="sd15-vae")
    truncated = tmp_path / "cut.pth"
    torch.save({"a": torch.zeros(1000)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(CheckpointError, match="corrupt"):
        UPLiFTModel.from_reference_checkpoint(str(truncated), preset="sd15-vae")
    with pytest.raises(FileNotFoundError, match="not found"):
        UPLiFTModel.from_reference_checkpoint(str(tmp_path / "nope.safetensors"))


def test_pickled_objects_are_not_executed(tmp_path):
    marker = tmp_path / "payload-ran"

    class Evil:
        def __reduce__(self):  # unpickling would create the marker file: a visible side effect
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pth"
    torch.save({"x": Evil()}, path)
    with pytest.raises(CheckpointError):
        UPLiFTModel.from_reference_checkpoint(str(path), preset="sd15-vae")
    assert not marker.exists(), "the checkpoint's pickled payload was executed"


def test_hub_repo_id_offline_gives_clear_message(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(OSError, match="UPLiFT-upsampler/uplift_sd1.5vae.*local file path"):
        UPLiFTModel.from_reference_checkpoint("UPLiFT-upsampler/uplift_sd1.5vae")

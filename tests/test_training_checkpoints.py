"""Checkpoints: kill-and-resume reproduces an uninterrupted run; bad checkpoints are refused, the previous kept."""

import csv
import json

import pytest
import torch
from training_helpers import tiny_backbone, tiny_config, write_images

from uplift_diffusion.training.checkpoints import CheckpointError, CheckpointManager
from uplift_diffusion.training.trainer import Trainer


class Killed(Exception):
    pass


class DiskFullOnWrite:
    def __reduce__(self):
        raise OSError("disk full")


def _kill_at(step_to_die):
    def callback(step, loss):
        if step == step_to_die:
            raise Killed(f"killed at step {step}")
    return callback


def _weights(path):
    from uplift_diffusion import UPLiFTModel

    return UPLiFTModel.from_pretrained(path).state_dict()


@pytest.fixture
def images(tmp_path):
    write_images(tmp_path / "images", count=3)
    return tmp_path / "images"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Training images and the weights of an uninterrupted run on them (``tiny_config``'s 6 steps), which a killed
    and resumed run must reproduce."""
    root = tmp_path_factory.mktemp("uninterrupted")
    write_images(root / "images", count=3)
    model = Trainer(tiny_config(root / "a", root / "images"), backbone=tiny_backbone()).train()
    return root / "images", _weights(model)


def test_kill_and_resume_matches_an_uninterrupted_run(tmp_path, uninterrupted):
    # 3 images x 2 views, batch 2: 3 steps per epoch, so the kill lands mid-epoch and the run crosses epochs.
    images, expected = uninterrupted
    config = tiny_config(tmp_path / "b", images)
    with pytest.raises(Killed):
        Trainer(config, backbone=tiny_backbone()).train(callback=_kill_at(3))  # last checkpoint: step 2
    manager = CheckpointManager(tmp_path / "b" / "run" / "checkpoints")
    assert [p.name for p in manager.list()] == ["checkpoint-00000002"]
    resumed_trainer = Trainer(config, backbone=tiny_backbone(seed=0))
    resumed = resumed_trainer.train(resume=True)

    got = _weights(resumed)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.equal(expected[key], got[key]), key
    with open(tmp_path / "b" / "run" / "loss_log.csv") as f:  # rows of the killed step were dropped
        assert [int(r["step"]) for r in csv.DictReader(f)] == [1, 2, 3, 4, 5, 6]
    assert (resumed_trainer.epoch, resumed_trainer.batch_in_epoch) == (1, 3)  # 6 steps = 2 full epochs
    assert (tmp_path / "b" / "run" / "previews" / "step-00000006.png").is_file()


def test_resume_skips_a_corrupt_newest_checkpoint(tmp_path, uninterrupted, capsys):
    images, expected = uninterrupted
    config = tiny_config(tmp_path / "b", images)
    with pytest.raises(Killed):
        Trainer(config, backbone=tiny_backbone()).train(callback=_kill_at(5))  # checkpoints 2 and 4
    newest = CheckpointManager(tmp_path / "b" / "run" / "checkpoints").path_for(4)
    weights = newest / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])  # truncated
    resumed = Trainer(config, backbone=tiny_backbone()).train(resume=True)
    out = capsys.readouterr().out
    assert "checkpoint-00000004 is truncated" in out and "resumed from" in out and "checkpoint-00000002" in out
    got = _weights(resumed)
    for key, value in expected.items():
        assert torch.equal(value, got[key]), key


def _save_two(tmp_path):
    manager = CheckpointManager(tmp_path / "ckpt", keep_last=2)
    for step in (1, 2):
        manager.save(step, {"w": torch.full((4, 4), float(step))}, {"optimizer": {"lr": 0.1 * step}})
    return manager


def test_truncated_or_corrupt_checkpoints_are_refused_clearly(tmp_path):
    manager = _save_two(tmp_path)
    good, bad = manager.path_for(1), manager.path_for(2)
    model_state, training_state = manager.load(bad)
    assert torch.equal(model_state["w"], torch.full((4, 4), 2.0)) and training_state["step"] == 2

    state = bad / "training_state.pt"
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt: training_state.pt has"):
        manager.load(bad)
    found = manager.load_latest()
    assert found is not None and found[0] == good and torch.equal(found[1]["w"], torch.ones(4, 4))
    assert "truncated" in manager.skipped[0]

    weights = good / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # same size, different content
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt: the sha256 of model.safetensors"):
        manager.load(good)
    assert manager.load_latest() is None

    (bad / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        manager.load(bad)
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="unreadable manifest.json"):
        manager.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        manager.load(tmp_path / "nowhere")


def test_a_failed_save_keeps_the_previous_checkpoints(tmp_path):
    manager = _save_two(tmp_path)
    with pytest.raises(OSError, match="disk full"):  # the write dies half-way, like a crash during a save
        manager.save(3, {"w": torch.zeros(2)}, {"optimizer": DiskFullOnWrite()})
    assert [p.name for p in manager.list()] == ["checkpoint-00000001", "checkpoint-00000002"]
    assert manager.load_latest()[2]["step"] == 2
    manager.save(3, {"w": torch.zeros(2)}, {})  # the next good save prunes down to keep_last
    assert [p.name for p in manager.list()] == ["checkpoint-00000002", "checkpoint-00000003"]
    manifest = json.loads((manager.path_for(3) / "manifest.json").read_text())
    assert manifest["step"] == 3 and set(manifest["files"]) == {"model.safetensors", "training_state.pt"}


def test_a_new_trainer_can_export_and_checkpoint_before_training(tmp_path, images):
    """Everything the trainer's methods read (objective, optimizer, schedule, unwrapped model) exists from
    construction on: exporting before any step writes the initial model."""
    trainer = Trainer(tiny_config(tmp_path, images), backbone=tiny_backbone())
    initial = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    exported = _weights(trainer.export())
    assert exported.keys() == initial.keys()
    assert all(torch.equal(exported[k], initial[k]) for k in initial)
    assert trainer.scheduler.get_last_lr() and trainer.optimizer.param_groups
    with open(trainer.output_dir / "model" / "config.json") as f:  # the latent space it was trained for
        assert json.load(f)["latent_space"]["latent_channels"] == trainer.backbone.channels

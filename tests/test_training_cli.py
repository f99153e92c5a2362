"""`uplift-diffusion train`: JSON / YAML / TOML configs, a tiny end-to-end run, resume, and clear config errors."""

import json

import pytest
from training_helpers import tiny_config, tiny_taef2, write_images

from uplift_diffusion import UPLiFTModel
from uplift_diffusion.cli import main
from uplift_diffusion.training.config import TrainConfig


@pytest.fixture
def setup(tmp_path):
    write_images(tmp_path / "images", count=3)
    tiny_taef2().save_pretrained(tmp_path / "taef2")  # a real (random-init) taef2-layout backbone on disk
    return tmp_path


def _two_step_config(setup):
    """A 2-step run (a checkpoint after each step) written as train.json; returns its path."""
    path = setup / "train.json"
    path.write_text(json.dumps(tiny_config(setup, setup / "images", max_steps=2, checkpoint_every=1).to_dict()))
    return path


def test_cli_trains_resumes_and_exports(setup, capsys):
    path = _two_step_config(setup)
    assert main(["train", "--config", str(path)]) == 0
    out = setup / "run"
    model = UPLiFTModel.from_pretrained(out / "model")
    assert model.config.in_channels == 4
    assert (out / "loss_log.csv").read_text().count("\n") == 3  # header + 2 steps
    assert sorted(p.name for p in (out / "previews").iterdir()) == ["step-00000001.png", "step-00000002.png"]
    assert "trained model saved to" in capsys.readouterr().out

    assert main(["train", "--config", str(path), "--resume", "--max-steps", "3"]) == 0
    assert "resumed from" in capsys.readouterr().out
    assert (out / "checkpoints" / "checkpoint-00000003").is_dir()


def test_an_earlier_run_is_never_silently_replaced(setup, capsys):
    path = _two_step_config(setup)
    assert main(["train", "--config", str(path)]) == 0
    out = setup / "run"
    log = (out / "loss_log.csv").read_text()
    capsys.readouterr()

    # a second run into the same folder is refused before anything is touched
    assert main(["train", "--config", str(path), "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds a training run" in err and "--resume" in err and "--overwrite" in err
    assert (out / "loss_log.csv").read_text() == log
    assert main(["train", "--config", str(path), "--resume", "--overwrite"]) == 2
    assert "pass only one" in capsys.readouterr().err

    # --overwrite replaces it: no checkpoint of the old run is left for a later --resume to continue
    assert main(["train", "--config", str(path), "--overwrite", "--max-steps", "1"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint-00000001"]
    assert (out / "loss_log.csv").read_text().count("\n") == 2  # header + 1 step
    assert (setup / "cache").is_dir()  # the feature cache (same settings) is kept


@pytest.mark.parametrize("flag, value", [("--max-steps", "0"), ("--max-steps", "-1"), ("--max-minutes", "0")])
def test_cli_overrides_are_validated(setup, capsys, flag, value):
    path = setup / "train.json"
    path.write_text(json.dumps(tiny_config(setup, setup / "images").to_dict()))
    with pytest.raises(SystemExit) as stop:  # refused by the parser, naming the flag, before any work
        main(["train", "--config", str(path), flag, value])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and f"argument {flag}: must be" in err and not (setup / "run" / "model").exists(), err


def test_config_formats_agree(tmp_path):
    yaml = pytest.importorskip("yaml")
    data = {"output_dir": "x", "max_steps": 5, "loss": {"depths": [1, 2], "noise_sigma": 1.0},
            "data": {"sources": [{"type": "folder", "path": "imgs"}], "crop_size": 64}}
    (tmp_path / "c.json").write_text(json.dumps(data))
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "c.toml").write_text('output_dir = "x"\nmax_steps = 5\n[loss]\ndepths = [1, 2]\nnoise_sigma = 1.0\n'
                                     '[data]\ncrop_size = 64\n[[data.sources]]\ntype = "folder"\npath = "imgs"\n')
    configs = [TrainConfig.from_file(tmp_path / f"c.{ext}") for ext in ("json", "yaml", "toml")]
    assert configs[0] == configs[1] == configs[2]
    assert configs[0].loss.depths == [1, 2] and configs[0].data.sources[0].path == "imgs"


@pytest.mark.parametrize("bad, message", [
    ({"optim": {"learning_rate": 1.0}}, "unknown key\\(s\\) \\['learning_rate'\\] in config.optim"),
    ({"loss": {"depths": [0]}}, "loss.depths must be"),
    ({"backbone": {"type": "clip"}}, "backbone.type must be one of"),
    ({"max_steps": None}, "stopping rule"),
    ({"max_steps": 0}, "max_steps must be an integer >= 1"),
    ({"max_steps": -3}, "max_steps must be an integer >= 1"),
    ({"max_steps": None, "max_minutes": 0}, "max_minutes must be > 0"),
    ({"max_minutes": -1.5}, "max_minutes must be > 0"),
])
def test_bad_configs_are_one_line_errors(tmp_path, capsys, bad, message):
    import re

    with pytest.raises(ValueError, match=message):
        TrainConfig.from_dict(bad)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(bad))
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("uplift-diffusion train: error:") and re.search(message, err)


def test_model_and_backbone_mismatch_is_explained(setup):
    from training_helpers import tiny_backbone

    from uplift_diffusion.training.trainer import Trainer

    config = tiny_config(setup, setup / "images", model={"preset": "tiny-vae", "overrides": {"in_channels": 8}})
    with pytest.raises(ValueError, match="set model.overrides.in_channels = 4"):
        Trainer(config, backbone=tiny_backbone())
    config = tiny_config(setup, setup / "images", data={"sources": [{"type": "folder", "path": str(setup / "images")}],
                                                        "crop_size": 24})
    with pytest.raises(ValueError, match="multiple of patch_size"):
        Trainer(config, backbone=tiny_backbone())


def test_shipped_configs_parse():
    from pathlib import Path

    configs = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.json"))
    assert {p.name for p in configs} >= {"taef2_bsds.json", "sd15_vae.json", "dinov2_s14.json",
                                         "taef2_builtin.json", "taef2_grow_depth3.json"}
    parsed = {path.name: TrainConfig.from_file(path) for path in configs}
    exports = {f"{c.output_dir}/model" for c in parsed.values()}
    for config in parsed.values():
        if config.model.init_from:  # a later stage starts from the model an earlier recipe exports
            assert config.model.init_from in exports
        else:
            UPLiFTModel.from_preset(config.model.preset, **config.model.overrides)  # the model config is valid


def test_a_vae_backbone_that_loads_as_neither_kind_reports_both_causes(tmp_path):
    from uplift_diffusion.training.backbones import load_backbone
    from uplift_diffusion.training.config import BackboneConfig
    from uplift_diffusion.utils.errors import InputError

    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="neither an AutoencoderKL .* nor an AutoencoderTiny"):
        load_backbone(BackboneConfig(type="vae", path=str(tmp_path)))

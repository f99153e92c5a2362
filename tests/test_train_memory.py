"""A training step that cannot fit in memory is refused before the run starts, in one line naming the value to lower;
the estimate behind it stays between the measured peak and twice it."""

import json
import os
import sys

import pytest
from launch_helpers import run_at_once

from uplift_diffusion.cli import main
from uplift_diffusion.training.config import TrainConfig
from uplift_diffusion.training.memory import estimate_step_memory, step_memory_advice

# One step of a real run in a fresh process: the RSS high-water mark above the RSS once the Trainer is built (what the
# estimate counts), and the estimate.
_MEASURE = """
import json, sys
from uplift_diffusion.training.config import TrainConfig
from uplift_diffusion.training.memory import estimate_step_memory
from uplift_diffusion.training.trainer import Trainer

def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024

config = TrainConfig.from_dict(json.loads(sys.argv[1]))
trainer = Trainer(config)
base = rss("VmRSS:")
with open("/proc/self/clear_refs", "w") as refs:
    refs.write("5")
trainer.train()
print("MEASURED", json.dumps({"peak": rss("VmHWM:") - base, "estimate": estimate_step_memory(
    config, trainer.unwrapped, trainer.backbone, trainer.local_batch)}))
"""


def _config(tmp_path, shared_dir, **changes) -> dict:
    # Four photos: one batch of the largest case, and no time spent caching photos a single step never reads.
    photos = tmp_path / "photos"
    photos.mkdir(exist_ok=True)
    for source in sorted((shared_dir / "data" / "bsds500" / "val").glob("*.jpg"))[:4]:
        (photos / source.name).write_bytes(source.read_bytes())
    config = {"output_dir": str(tmp_path / "run"), "max_steps": 1, "batch_size": 2, "checkpoint_every": 1,
              "keep_last": 1, "log_every": 1, "preview_images": 0,
              "model": {"preset": "tiny-vae", "overrides": {"in_channels": 32}},
              "backbone": {"type": "taef2", "path": str(shared_dir / "weights" / "taef2")},
              "data": {"sources": [{"type": "folder", "path": str(photos)}],
                       "crop_size": 128, "views_per_image": 1},
              "loss": {"depths": [1, 2, 3]}}
    for key, value in changes.items():
        section, _, name = key.rpartition("__")
        (config[section] if section else config)[name] = value
    return config


CASES = {"batch 4": {"batch_size": 4}, "crop 256 batch 4": {"data__crop_size": 256, "batch_size": 4}}


@pytest.fixture(scope="module")
def measured(tmp_path_factory, shared_dir) -> dict[str, dict | str]:
    """``{case: {"peak": bytes, "estimate": bytes}}`` (or the process's stderr): the cases' processes run at once,
    each on one thread of its own (the peak is per process, so the other one does not change it)."""
    commands = {case: [sys.executable, "-c", _MEASURE,
                       json.dumps(_config(tmp_path_factory.mktemp("memory"), shared_dir, **changes))]
                for case, changes in CASES.items()}
    finished = run_at_once(commands, env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    results = {}
    for case, proc in finished.items():
        line = [x for x in proc.stdout.splitlines() if x.startswith("MEASURED")]
        results[case] = json.loads(line[0].split(" ", 1)[1]) if line else proc.stderr[-2000:]
    return results


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="needs Linux's clear_refs")
@pytest.mark.parametrize("case", CASES)
def test_the_estimate_is_between_the_measured_peak_and_twice_it(measured, case):
    result = measured[case]
    assert isinstance(result, dict), result
    assert result["peak"] <= result["estimate"] <= 2 * result["peak"], result


def test_a_step_too_big_for_the_memory_is_refused_in_one_line_before_the_run(tmp_path, shared_dir, capsys,
                                                                            monkeypatch):
    """Every value in its range, together more than the machine has: refused before anything is written."""
    path = tmp_path / "big.json"
    path.write_text(json.dumps(_config(tmp_path, shared_dir, batch_size=2048, data__crop_size=256,
                                       data__views_per_image=64)))
    monkeypatch.setattr("uplift_diffusion.training.trainer.device_memory_available", lambda device: 2 * 2**30)
    assert main(["train", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert "needs about" in err[0] and "2.0 GiB is available" in err[0], err[0]
    assert "batch_size 2048, data.crop_size 256" in err[0] and "lower batch_size to" in err[0], err[0]
    assert not (tmp_path / "run").exists()


class _Backbone:  # what the estimate reads of a backbone: the taef2 widths without loading weights
    patch_size, channels, vae = 16, 32, None


def test_the_advice_names_the_largest_batch_that_fits_else_the_crop(tmp_path):
    from uplift_diffusion import UPLiFTModel

    config = TrainConfig.from_dict({"batch_size": 8, "model": {"preset": "tiny-vae", "overrides": {"in_channels": 32}},
                                    "data": {"crop_size": 512}})
    model = UPLiFTModel.from_preset("tiny-vae", in_channels=32)
    per_batch = [estimate_step_memory(config, model, _Backbone(), b) for b in (1, 3, 4, 8)]
    assert per_batch == sorted(per_batch) and len(set(per_batch)) == 4
    assert step_memory_advice(config, model, _Backbone(), 8, 1, per_batch[-1]) is None
    advice = step_memory_advice(config, model, _Backbone(), 8, 1, per_batch[1] + 1)
    assert "lower batch_size to 3 or less" in advice and "data.crop_size 512" in advice, advice
    # two CPU processes share the machine: each needs its half of the batch, together the whole
    assert step_memory_advice(config, model, _Backbone(), 4, 2, 2 * per_batch[2]) is None
    advice = step_memory_advice(config, model, _Backbone(), 4, 2, 2 * per_batch[2] - 1)
    assert "lower batch_size to 6 or less" in advice, advice
    advice = step_memory_advice(config, model, _Backbone(), 8, 1, per_batch[0] - 1)
    assert "lower data.crop_size to" in advice and config.data.crop_size == 512, advice
    crop = int(advice.split("lower data.crop_size to ")[1].split()[0])
    assert crop < 512 and crop % 128 == 0

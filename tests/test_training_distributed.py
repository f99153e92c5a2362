"""Training on two processes (``accelerate launch --cpu --num_processes 2``): gradients synchronised (both processes
hold the same weights after every step), one checkpoint series / log / preview set, the same result as one process
with the same global batch, ``--resume`` across a change in the process count, and one stopping step for the step
and the time budgets."""

import csv
import json
from pathlib import Path

import pytest
import torch
from launch_helpers import Launch, accelerate_launch
from safetensors.torch import load_file
from training_helpers import tiny_config, tiny_taef2, write_images
from training_worker import read_records, recorder, weights_digest

from uplift_diffusion.cli import main
from uplift_diffusion.training.config import TrainConfig
from uplift_diffusion.training.trainer import Trainer

WORKER = str(Path(__file__).with_name("training_worker.py"))
TOLERANCE = {"atol": 1e-5, "rtol": 1e-4}  # float32 sums in another order (seen: 1e-6; per-rank noise: 8e-3)
LAUNCH_TIMEOUT = 240  # s; processes that wait for each other forever fail the test instead of hanging it


@pytest.fixture
def setup(tmp_path):
    write_images(tmp_path / "images", count=3)  # x 4 views = 12 views: 3 global batches of 4 per epoch
    tiny_taef2().save_pretrained(tmp_path / "taef2")  # both the launched processes and this one load it
    return tmp_path


def _config(setup: Path, name: str, **overrides) -> Path:
    """A config file for run ``name`` (its own output and cache folders): global batch 4, checkpoints every 2 steps."""
    data = {"sources": [{"type": "folder", "path": str(setup / "images")}], "crop_size": 32, "views_per_image": 4,
            "cache_dir": str(setup / name / "cache")}
    settings = {"output_dir": str(setup / name / "run"), "batch_size": 4, "max_steps": 4, "checkpoint_every": 2,
                "keep_last": 3, "data": data, **overrides}
    path = setup / f"{name}.json"
    path.write_text(json.dumps(tiny_config(setup, setup / "images", **settings).to_dict()))
    return path


def _train_here(config: Path, resume: bool = False, records: Path | None = None) -> Path:
    trainer = Trainer(TrainConfig.from_file(config))
    return trainer.train(resume=resume, callback=recorder(trainer, records) if records else None)


def _log(run: Path) -> list[dict]:
    with open(run / "loss_log.csv") as f:
        return list(csv.DictReader(f))


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    for key in wa:
        torch.testing.assert_close(wb[key], wa[key], **TOLERANCE, msg=lambda m, key=key: f"{key}: {m}")


def _assert_same_log(reference: list[dict], log: list[dict], extra_columns: tuple[str, ...] = ()) -> None:
    assert [r["step"] for r in log] == [r["step"] for r in reference]
    for want, got in zip(reference, log, strict=True):
        for column in ("loss", "d1_k1", "d2_k1", "d2_k2", "lr", *extra_columns):
            assert float(got[column]) == pytest.approx(float(want[column]), rel=1e-4), (want["step"], column)


def test_two_processes_hold_one_model_write_one_run_and_equal_one_process(setup):
    one, two = setup / "one" / "run", setup / "two" / "run"
    # with the decoder-aware term on a random 2x2-latent window: one window per global batch, whoever computes it
    loss = {"depths": [1, 2], "noise_sigma": 0.5, "pixel_weight": 1.0, "pixel_window": 2}
    with Launch(WORKER, str(_config(setup, "two", loss=loss)), str(setup / "records"),
                timeout=LAUNCH_TIMEOUT) as launch:
        _train_here(_config(setup, "one", loss=loss))  # while the launched processes start up
        proc = launch.wait()

    # gradients are synchronised: after every step both processes hold bit-identical weights, and they do change
    records = read_records(setup / "records")
    assert sorted(records) == [0, 1]
    steps = [[r[0] for r in rows] for rows in records.values()]
    assert steps == [[1, 2, 3, 4]] * 2  # the step budget: both stop at the same step
    digests = [[r[3] for r in rows] for rows in records.values()]
    assert digests[0] == digests[1] and len(set(digests[0])) == 4
    assert [r[1] for r in records[0]] == [r[1] for r in records[1]]  # one agreed clock
    assert [r[2] for r in records[0]] != [r[2] for r in records[1]]  # ... though each trained on its own images

    # the main process alone writes: one checkpoint series, one log, one preview set, one model
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["checkpoint-00000002", "checkpoint-00000004"]
    assert sorted(p.name for p in (two / "previews").iterdir()) == ["step-00000002.png", "step-00000004.png"]
    assert [r["step"] for r in _log(two)] == ["1", "2", "3", "4"]
    assert sorted(p.name for p in two.iterdir()) == ["checkpoints", "loss_log.csv", "model", "previews", "run.json",
                                                      "train_config.json"]
    assert {p.name[:3] for p in (setup / "two" / "cache").glob("*.safetensors")} == {"r0-", "r1-"}  # own shards
    assert proc.stderr.count("Traceback") == 0

    # the same global batch (views, noise, order) gives the one-process result within float tolerance
    _assert_same_log(_log(one), _log(two), ("d1_px", "d2_px"))
    _assert_same_weights(one / "model" / "diffusion_pytorch_model.safetensors",
                         two / "model" / "diffusion_pytorch_model.safetensors")


def test_resume_changes_the_process_count_both_ways(setup, capsys):
    reference = setup / "reference" / "run"

    # 1 process to step 2 (mid-epoch), 2 processes (the CLI under accelerate launch) on to step 4 ...
    config = _config(setup, "run", max_steps=2)
    _train_here(config)
    with Launch("-m", "uplift_diffusion.cli", "train", "--config", str(config), "--resume", "--max-steps", "4",
                timeout=LAUNCH_TIMEOUT) as launch:
        _train_here(_config(setup, "reference", max_steps=6))  # while the launched processes start up
        proc = launch.wait()
    assert proc.stdout.count("resumed from") == 1 and "checkpoint-00000002 (step 2, epoch 0)" in proc.stdout
    assert proc.stdout.count("trained model saved to") == 1
    run = setup / "run" / "run"
    _assert_same_weights(reference / "checkpoints" / "checkpoint-00000004" / "model.safetensors",
                         run / "checkpoints" / "checkpoint-00000004" / "model.safetensors")

    # ... and 1 process again from the checkpoint the two wrote, to step 6
    capsys.readouterr()
    assert main(["train", "--config", str(config), "--resume", "--max-steps", "6"]) == 0
    assert "checkpoint-00000004 (step 4, epoch 1)" in capsys.readouterr().out
    _assert_same_weights(reference / "model" / "diffusion_pytorch_model.safetensors",
                         run / "model" / "diffusion_pytorch_model.safetensors")
    _assert_same_log(_log(reference), _log(run))


def test_a_time_budget_stops_every_process_at_the_same_step(setup):
    # Process 0's clock reads 1 s per step, process 1's 0.5 s: alone, they would stop after steps 3 and 6 of a
    # 3-second budget (and follow different learning rates on the way).
    config = _config(setup, "timed", max_steps=None, max_minutes=3 / 60, optim={"scheduler": "cosine"})
    accelerate_launch(WORKER, str(config), str(setup / "records"), "--fake-clock", timeout=LAUNCH_TIMEOUT)
    records = read_records(setup / "records")
    assert [[r[0] for r in rows] for rows in records.values()] == [[1, 2, 3]] * 2
    assert [r[1] for r in records[0]] == [r[1] for r in records[1]] == [1.0, 2.0, 3.0]  # the slowest clock
    assert [r[3] for r in records[0]] == [r[3] for r in records[1]]  # same learning rates: same weights
    log = _log(setup / "timed" / "run")
    lrs = [float(r["lr"]) for r in log]
    assert [r["step"] for r in log] == ["1", "2", "3"] and lrs[0] > lrs[1] > lrs[2]  # cosine over the budget
    assert sorted(p.name for p in (setup / "timed" / "run" / "checkpoints").iterdir()) == ["checkpoint-00000002",
                                                                                           "checkpoint-00000003"]


def test_the_global_batch_must_split_evenly(setup):
    from types import SimpleNamespace

    from uplift_diffusion.utils.errors import InputError

    config = TrainConfig.from_file(_config(setup, "odd", batch_size=3))
    with pytest.raises(InputError, match="batch_size 3 is the global batch .* divisible by the number of processes"):
        Trainer(config, accelerator=SimpleNamespace(num_processes=2))
    assert Trainer(config).local_batch == 3  # one process: any batch size


def test_the_weights_digest_sees_one_ulp():
    """The digest the distributed tests compare sees a one-ulp change of one weight."""
    from uplift_diffusion import UPLiFTModel

    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=2)
    before = weights_digest(model)
    with torch.no_grad():
        p = next(model.parameters())
        p.view(-1)[0] = torch.nextafter(p.view(-1)[0], torch.tensor(float("inf")))
    assert weights_digest(model) != before


def test_a_non_finite_loss_stops_the_run_before_a_checkpoint(setup):
    """The loss is shared after every step (with the elapsed time), so a NaN on any process stops every process."""
    from uplift_diffusion import UPLiFTModel

    config = TrainConfig.from_file(_config(setup, "nan"))
    torch.manual_seed(0)
    model = UPLiFTModel.from_preset("tiny-vae", in_channels=4, noise_channels=2)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    with pytest.raises(FloatingPointError, match="loss became nan at step 1"):
        Trainer(config, model=model).train()
    assert not (setup / "nan" / "run" / "checkpoints").exists()

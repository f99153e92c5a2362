"""Learning-rate schedules of time-budgeted runs: cosine / linear decay over max_minutes, resumable."""

import csv
import itertools
import math
from types import SimpleNamespace

import pytest
from training_helpers import tiny_backbone, tiny_config, write_images

from uplift_diffusion.training.trainer import Trainer, time_budget_schedule


@pytest.mark.parametrize("kind, expected", [("cosine", lambda t: 0.5 * (1 + math.cos(math.pi * t))),
                                            ("linear", lambda t: 1 - t)])
def test_factor_follows_the_elapsed_fraction_of_the_budget(kind, expected):
    trainer = SimpleNamespace(elapsed=0.0)
    factor = time_budget_schedule(trainer, budget_s=100.0, kind=kind)
    for elapsed in (0.0, 25.0, 50.0, 99.0, 100.0, 250.0):
        trainer.elapsed = elapsed
        assert factor(0) == pytest.approx(expected(min(1.0, elapsed / 100.0)))


def test_time_budgeted_cosine_run_decays_and_resumes(tmp_path):
    images = tmp_path / "images"
    write_images(images, count=3)
    config = tiny_config(tmp_path, images, max_steps=None, max_minutes=0.05, checkpoint_every=1000,
                         optim={"lr": 1e-3, "scheduler": "cosine"})
    trainer = Trainer(config, backbone=tiny_backbone())
    trainer.clock = itertools.count().__next__  # one second per step, whatever the machine's load (budget: 3 s)
    trainer.train()
    with open(tmp_path / "run" / "loss_log.csv") as f:
        lrs = [float(r["lr"]) for r in csv.DictReader(f)]
    assert len(lrs) == 3 and lrs == sorted(lrs, reverse=True)  # monotone decay
    assert lrs[-1] < 0.5e-3  # past the middle of the budget

    # The final checkpoint (scheduler state included) loads with weights_only and continues the same curve.
    resumed = Trainer(config, backbone=tiny_backbone())
    resumed.clock = itertools.count().__next__
    resumed.train(resume=True)
    assert resumed.step == trainer.step and resumed.elapsed == pytest.approx(trainer.elapsed)

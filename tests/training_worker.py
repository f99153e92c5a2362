"""The trainer as ``accelerate launch`` runs it, recording what every process holds after every step.

``python training_worker.py CONFIG RECORD_DIR [--resume] [--fake-clock]`` (under ``accelerate launch`` or not) trains
as ``uplift-diffusion train`` does and appends ``step elapsed loss sha256(weights)`` to ``RECORD_DIR/rank<r>.txt``
after each optimizer step. ``--fake-clock``: process r's clock reads ``n / (r + 1)`` seconds at its n-th reading, so
the processes disagree about the time (a ``max_minutes`` budget tests how they agree on when to stop).
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

from uplift_diffusion.training.config import TrainConfig
from uplift_diffusion.training.trainer import Trainer


def weights_digest(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def recorder(trainer: Trainer, folder: Path):
    """A step callback writing this process's step, elapsed time, loss and weights digest."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"rank{trainer.accelerator.process_index}.txt"

    def record(step: int, loss: float) -> None:
        with open(path, "a") as f:
            f.write(f"{step} {trainer.elapsed!r} {loss!r} {weights_digest(trainer.unwrapped)}\n")

    return record


def read_records(folder: Path) -> dict[int, list[tuple[int, float, float, str]]]:
    """``{rank: [(step, elapsed, loss, digest), ...]}`` of the files :func:`recorder` wrote."""
    records = {}
    for path in sorted(folder.glob("rank*.txt")):
        rows = [line.split() for line in path.read_text().splitlines()]
        records[int(path.stem[4:])] = [(int(s), float(e), float(loss), d) for s, e, loss, d in rows]
    return records


def fake_clock(rank: int):
    readings = 0

    def clock() -> float:
        nonlocal readings
        readings += 1
        return readings / (rank + 1)

    return clock


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("config")
    parser.add_argument("records", type=Path)
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--fake-clock", action="store_true")
    args = parser.parse_args()
    trainer = Trainer(TrainConfig.from_file(args.config))
    if args.fake_clock:
        trainer.clock = fake_clock(trainer.accelerator.process_index)
    trainer.train(resume=args.resume, callback=recorder(trainer, args.records))


if __name__ == "__main__":
    main()

"""The GPU training command (benchmarks/train_gpu.py) runs end to end here on the CPU with a handful of steps."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _photos(folder: Path, count: int, size=(256, 224)) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(count):
        small = rng.integers(0, 256, (7, 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize(size, Image.Resampling.BICUBIC).save(folder / f"{i}.png")


def test_gpu_training_command_trains_exports_and_scores_on_the_cpu(tmp_path):
    data = tmp_path / "data"
    for split in ("bsds500/train", "bsds500/val"):
        _photos(data / split, 1)
    _photos(tmp_path / "val", 1, size=(192, 128))
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "benchmarks" / "train_gpu.py"), "--out", str(out), "--max-steps", "2",
           "--batch-size", "2", "--num-workers", "0", "--data-root", str(data), "--val-dir", str(tmp_path / "val"),
           "--val-count", "1"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "result.json").read_text())
    assert result["steps"] == 2 and result["device"] == "cpu"
    assert (out / "model" / "config.json").is_file()
    scores = result["scores"]
    assert set(scores) == {"2x", "4x", "8x", "4x aliased", "4x generation"}
    assert all(np.isfinite(scores[p][m]["psnr"]) for p in scores for m in ("uplift", "bicubic"))

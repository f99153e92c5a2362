"""Sharded evaluation: ``accelerate launch --cpu --num_processes 2 -m uplift_diffusion.cli eval sr ...`` splits the
images across the processes; the images are bit-identical to a one-process run, the metrics equal within float
tolerance, and a run stopped midway resumes under the other process count without recomputing what exists."""

import json

import numpy as np
import pytest
import torch
from launch_helpers import launch_two as _launch_two
from PIL import Image
from test_eval_sr import _tiny_vae, image_folder  # noqa: F401  (fixture)

from uplift_diffusion.cli import main


@pytest.fixture
def one_thread():
    """One torch thread in this process too: the order of float reductions (and so the last bit of a pixel) depends
    on the thread count, so bit-exact comparisons need the same count per process as the launched ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sr_args(image_folder, tmp_path, one_thread):  # noqa: F811
    _tiny_vae().save_pretrained(tmp_path / "vae")
    return lambda out, *extra: ["eval", "sr", "--images", str(image_folder), "--vae", str(tmp_path / "vae"),
                                "--random-upsampler", "tiny-vae", "--output", str(out), "--size", "64",
                                "--fid-backend", "none", "--batch-size", "1", "--device", "cpu", *extra]


def _images(out):
    return {p.relative_to(out).as_posix(): np.array(Image.open(p)) for p in sorted((out / "images").rglob("*.png"))}


def _mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}


def _assert_same_results(a, b):
    ra, rb = (json.loads((o / "results.json").read_text()) for o in (a, b))
    assert ra["metrics"].keys() == rb["metrics"].keys()
    for method, ma in ra["metrics"].items():
        for key, value in ma.items():
            if isinstance(value, float):
                assert rb["metrics"][method][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (method, key)
            else:
                assert rb["metrics"][method][key] == value, (method, key)
    assert (b / "table.md").read_text() == (a / "table.md").read_text()
    assert (b / "samples.png").is_file()


def test_two_processes_equal_one_and_resume_across_process_counts(sr_args, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert main(sr_args(one)) == 0
    reference = _images(one)
    assert len(reference) == 15  # 5 images x 3 methods

    # a 2-process run stopped midway (only the first 3 images of each method), then finished by 1 process
    _launch_two(sr_args(two, "--limit", "3"))
    partial, before = _images(two), _mtimes(two)
    assert len(partial) == 9 and all(np.array_equal(img, reference[k]) for k, img in partial.items())
    assert main(sr_args(two)) == 0
    assert {k: v for k, v in _mtimes(two).items() if k in before} == before  # nothing recomputed
    final = _images(two)
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, two)

    # the other way round: 1 process stopped after 2 images, 2 processes finish; then a full 2-process rerun
    other = tmp_path / "other"
    assert main(sr_args(other, "--limit", "2")) == 0
    before = _mtimes(other)
    proc = _launch_two(sr_args(other))
    assert proc.stdout.count("results:") == 1  # the main process alone scores and reports
    assert {k: v for k, v in _mtimes(other).items() if k in before} == before
    final = _images(other)
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, other)

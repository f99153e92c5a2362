"""Sharded evaluation: ``accelerate launch --cpu --num_processes 2 -m uplift_diffusion.cli eval sr|coco|relaion ...``
splits the images across the processes; the images are bit-identical to a one-process run, the metrics equal within
float tolerance, and a run stopped midway resumes under the other process count without recomputing what exists.

Run as a script (``accelerate launch ... tests/test_eval_sharded.py eval coco ...``) this file is the CLI with the FID
Inception replaced by the small feature net of the other text2img tests (the 2048-d Inception and its 2048² matrix
square root take minutes on this CPU); everything else is ``uplift_diffusion.cli.main``.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from eval_helpers import SmallFeatures, tiny_clip, tiny_vae
from launch_helpers import Launch
from launch_helpers import launch_two as _launch_two
from PIL import Image
from tiny_sd import build_pipeline
from uplift_diffusion.eval.metrics import FID

from uplift_diffusion.cli import main
from uplift_diffusion.commands import eval as eval_command


@pytest.fixture
def one_thread():
    """One torch thread in this process too: the order of float reductions (and so the last bit of a pixel) depends
    on the thread count, so bit-exact comparisons need the same count per process as the launched ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def sr_args(image_folder, tmp_path, one_thread):
    tiny_vae().save_pretrained(tmp_path / "vae")
    return lambda out, *extra: ["eval", "sr", "--images", str(image_folder), "--vae", str(tmp_path / "vae"),
                                "--random-upsampler", "tiny-vae", "--output", str(out), "--size", "64",
                                "--fid-backend", "none", "--batch-size", "1", "--device", "cpu", *extra]


def _small_fid_factory(args, device):
    return None if args.fid_backend == "none" else lambda: FID("torchmetrics", feature_extractor=SmallFeatures())


def _launch_small_fid(args) -> Launch:
    """This file under ``accelerate launch`` on two CPU processes (started, see ``Launch``): the CLI with the small
    FID net."""
    return Launch(str(Path(__file__)), *args)


def _images(out):
    return {p.relative_to(out).as_posix(): np.array(Image.open(p)) for p in sorted((out / "images").rglob("*.png"))}


def _mtimes(out):
    return {p.relative_to(out).as_posix(): p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}


def _num_processes(out):
    return json.loads((out / "results.json").read_text())["config"]["num_processes"]


def _assert_same_results(a, b):
    ra, rb = (json.loads((o / "results.json").read_text()) for o in (a, b))
    assert ra["metrics"].keys() == rb["metrics"].keys()
    for method, ma in ra["metrics"].items():
        assert ma.keys() == rb["metrics"][method].keys(), method
        for key, value in ma.items():
            if isinstance(value, float):
                assert rb["metrics"][method][key] == pytest.approx(value, rel=1e-6, abs=1e-9), (method, key)
            else:
                assert rb["metrics"][method][key] == value, (method, key)
    assert (b / "table.md").read_text() == (a / "table.md").read_text()
    assert (b / "samples.png").is_file()


def test_two_processes_equal_one_and_resume_across_process_counts(sr_args, tmp_path):
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    # a 2-process run stopped midway (only the first 3 images of each method); the one-process runs use the other
    # core meanwhile: the reference, and a run stopped after 2 images
    with Launch("-m", "uplift_diffusion.cli", *sr_args(two, "--limit", "3")) as stopped_midway:
        assert main(sr_args(one)) == 0
        assert main(sr_args(other, "--limit", "2")) == 0
        stopped_midway.wait()
    reference = _images(one)
    assert len(reference) == 20  # 5 images x 4 methods (uplift, latent bilinear / nearest, pixel bicubic)
    partial, before = _images(two), _mtimes(two)
    assert len(partial) == 12 and all(np.array_equal(img, reference[k]) for k, img in partial.items())
    before_other = _mtimes(other)

    # 1 process finishes the 2-process run while 2 processes finish the 1-process one
    with Launch("-m", "uplift_diffusion.cli", *sr_args(other)) as finishing:
        assert main(sr_args(two)) == 0
        proc = finishing.wait()
    assert {k: v for k, v in _mtimes(two).items() if k in before} == before  # nothing recomputed
    final = _images(two)
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, two)

    assert proc.stdout.count("results:") == 1 and _num_processes(other) == 2  # the main process alone reports
    assert {k: v for k, v in _mtimes(other).items() if k in before_other} == before_other
    final = _images(other)
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, other)


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    """A saved tiny UPLiFTPipeline (64² SD, 128² with UPLiFT), six 128²-ish real images with captions, a COCO
    captions file over them and a saved tiny CLIP."""
    root = tmp_path_factory.mktemp("tiny_sd")
    build_pipeline(root)
    real = root / "real"
    real.mkdir()
    rng = np.random.default_rng(0)
    captions = ["a cat", "a dog", "cat dog", "dog", "cat", "a cat dog"]
    for i, caption in enumerate(captions):
        Image.fromarray(rng.integers(0, 256, (128 + 4 * i, 136, 3), dtype=np.uint8)).save(real / f"im{i}.png")
        (real / f"im{i}.txt").write_text(caption)
    (root / "captions.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"im{i}.png"} for i in range(len(captions))],
        "annotations": [{"image_id": i, "caption": c} for i, c in enumerate(captions)]}))
    model, processor = tiny_clip(root)
    with torch.no_grad():  # its mean cosine is negative: flipped, the score (floored at 0) is not a constant 0
        model.visual_projection.weight.neg_()
    model.save_pretrained(root / "clip")
    processor.save_pretrained(root / "clip")
    return root


def _text2img_args(benchmark, root, out, *extra):
    data = (["--annotations", str(root / "captions.json"), "--images", str(root / "real")] if benchmark == "coco"
            else ["--data", str(root / "real"), "--min-side", "128", "--clip-model", str(root / "clip")])
    return ["eval", benchmark, *data, "--pipeline", str(root / "pipeline"),
            "--upsampler", str(root / "pipeline" / "upsampler"), "--steps", "2", "--num-samples", "6",
            "--batch-size", "2", "--output", str(out), "--device", "cpu", *extra]


def test_coco_two_processes_equal_one_and_resume_across_process_counts(tiny_sd, tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(eval_command, "_fid_factory", _small_fid_factory)
    one, two, other = tmp_path / "one", tmp_path / "two", tmp_path / "other"
    # 2 processes stopped after 2 of the 3 batches of 2 captions (one batch each); meanwhile, on the other core, the
    # one-process reference and 1 process stopped after one batch
    with _launch_small_fid(_text2img_args("coco", tiny_sd, two, "--limit", "4")) as stopped_midway:
        assert main(_text2img_args("coco", tiny_sd, one)) == 0
        assert main(_text2img_args("coco", tiny_sd, other, "--limit", "2")) == 0
        stopped_midway.wait()
    reference = _images(one)
    assert len(reference) == 12  # 6 captions x (SD at 64², SD + UPLiFT at 128²)
    results = json.loads((one / "results.json").read_text())["metrics"]
    assert {k: v["patch_fid"] is None for k, v in results.items()} == {"sd15-2": True, "sd15-2-uplift": False}
    partial, before = _images(two), _mtimes(two)
    assert len(partial) == 8 and all(np.array_equal(img, reference[k]) for k, img in partial.items())
    before_other = _mtimes(other)

    # 1 process finishes the 2-process run; 2 processes finish the 1-process one and score (FID, patch-FID)
    with _launch_small_fid(_text2img_args("coco", tiny_sd, other)) as finishing:
        assert main(_text2img_args("coco", tiny_sd, two)) == 0
        proc = finishing.wait()
    assert {k: v for k, v in _mtimes(two).items() if k in before} == before  # nothing recomputed
    final = _images(two)
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, two)

    assert proc.stdout.count("results:") == 1 and _num_processes(other) == 2  # the main process alone reports
    assert {k: v for k, v in _mtimes(other).items() if k in before_other} == before_other
    final = _images(other)
    assert final.keys() == reference.keys() and all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, other)


def test_relaion_two_processes_equal_one_and_refuse_stale_folder(tiny_sd, tmp_path, one_thread, monkeypatch):
    monkeypatch.setattr(eval_command, "_fid_factory", _small_fid_factory)
    one, two = tmp_path / "one", tmp_path / "two"
    with _launch_small_fid(_text2img_args("relaion", tiny_sd, two, "--no-baseline")) as launch:
        assert main(_text2img_args("relaion", tiny_sd, one, "--no-baseline")) == 0  # on the other core meanwhile
        proc = launch.wait()
    assert proc.stdout.count("results:") == 1 and _num_processes(two) == 2
    reference, final = _images(one), _images(two)
    assert len(reference) == 6 and final.keys() == reference.keys()
    assert all(np.array_equal(final[k], reference[k]) for k in reference)
    _assert_same_results(one, two)  # CLIP score, FID, patch-FID of the saved images
    scores = json.loads((two / "results.json").read_text())["metrics"]["sd15-2-uplift"]
    assert min(scores["clip_score"], scores["fid"], scores["patch_fid"]) > 0

    # another seed into the same folder: the main process refuses it before anything is written, and the launch
    # ends (the launcher stops the process waiting at the barrier) with the refusal as its message
    before = _mtimes(two)
    with pytest.raises(AssertionError, match="pass --overwrite"):
        _launch_two(_text2img_args("relaion", tiny_sd, two, "--no-baseline", "--seed", "1", "--fid-backend", "none"))
    assert _mtimes(two) == before


def test_eval_on_two_processes_ends_a_broken_photo_in_one_line(sr_args, image_folder, tmp_path):
    """`eval sr --num-processes 2` starts its processes itself (the launcher `train --num-processes` uses): a
    truncated JPEG that one process meets is one line naming the file and exit code 2, with neither the other
    process's traceback nor the launcher's."""
    import os
    import subprocess

    Image.fromarray(np.zeros((80, 80, 3), np.uint8)).save(image_folder / "cut.jpg")
    data = (image_folder / "cut.jpg").read_bytes()
    (image_folder / "cut.jpg").write_bytes(data[: len(data) // 2])
    command = [sys.executable, "-m", "uplift_diffusion.cli", *sr_args(tmp_path / "out", "--num-processes", "2")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    lines = [line for line in proc.stderr.replace("\r", "\n").splitlines() if line.strip() and "it/s" not in line]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("uplift-diffusion eval: error: cannot read image") and "cut.jpg" in lines[0]


def test_fid_statistics_of_shares_merge_to_the_whole():
    """What ``FID.gather`` adds up across processes: the clean-fid backend's statistics of two shares of a set, merged,
    give the FID of the whole set (the torchmetrics backend sums its states with accelerate's reduce)."""
    g = torch.Generator().manual_seed(0)
    real, fake = (torch.randint(0, 256, (6, 3, 48, 48), generator=g, dtype=torch.uint8) for _ in range(2))
    whole, shares, other = (FID("clean-fid", feature_extractor=SmallFeatures()) for _ in range(3))
    whole.update(real, real=True), whole.update(fake, real=False)
    shares.update(real[:2], real=True), other.update(real[2:], real=True)
    shares.update(fake[:5], real=False), other.update(fake[5:], real=False)
    shares.real.merge(other.real), shares.fake.merge(other.fake)
    assert shares.num_real == shares.num_fake == 6
    assert shares.compute() == pytest.approx(whole.compute(), rel=1e-9)
    shares.gather(real=False)  # one process: nothing to add
    assert shares.compute() == pytest.approx(whole.compute(), rel=1e-9)


if __name__ == "__main__":  # `accelerate launch ... tests/test_eval_sharded.py eval coco ...`: the CLI, small FID net
    eval_command._fid_factory = _small_fid_factory
    sys.exit(main(sys.argv[1:]))

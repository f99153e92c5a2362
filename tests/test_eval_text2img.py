"""COCO and reLAION benchmarks end to end on a tiny fixture: a tiny UPLiFTPipeline (tests/tiny_sd.py), generated
real images with captions, a small FID feature extractor and a tiny CLIP; resuming gives the same results.json."""

import json

import numpy as np
import pytest
from eval_helpers import SmallFeatures, tiny_clip
from PIL import Image
from tiny_sd import build_pipeline
from uplift_diffusion.eval.coco import load_coco_pairs, run_coco_benchmark
from uplift_diffusion.eval.common import generators
from uplift_diffusion.eval.metrics import FID, CLIPScorer
from uplift_diffusion.eval.relaion import load_relaion_pairs, run_relaion_benchmark
from uplift_diffusion.eval.text2img import default_rows, uplift_row

from uplift_diffusion.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_sd")
    pipe = build_pipeline(folder)  # 64x64 low res, 128x128 with UPLiFT; saved to folder / "pipeline"
    pipe.set_progress_bar_config(disable=True)
    return folder / "pipeline", pipe


@pytest.fixture(scope="module")
def pipe(saved):
    return saved[1]


@pytest.fixture
def real_images(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    rng = np.random.default_rng(0)
    sizes = [(160, 128), (128, 140), (200, 150), (90, 90)]  # the last one is below reLAION's min side
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"im{i}.png")
        (folder / f"im{i}.txt").write_text(["a cat", "a dog", "cat dog", "dog"][i])
    return folder


def _fid():
    return FID("torchmetrics", feature_extractor=SmallFeatures())


def _stable(results):
    return {k: v for k, v in results.items() if k != "timings"}


def _coco_annotations(folder):
    annotations = folder / "captions.json"
    annotations.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"im{i}.png"} for i in range(4)] + [{"id": 9, "file_name": "gone.png"}],
        "annotations": [{"image_id": i, "caption": c} for i, c in [(0, "a cat"), (0, "cat"), (1, "a dog"),
                                                                    (2, "cat dog"), (3, "dog"), (9, "x")]],
    }))
    return annotations


def test_coco_end_to_end_and_resume(pipe, real_images, tmp_path):
    annotations = _coco_annotations(tmp_path)
    pairs = load_coco_pairs(annotations, real_images, num_samples=3, seed=0)
    assert len(pairs) == 3 and all("gone" not in p for _, p in pairs)

    def run():
        return run_coco_benchmark(annotations, real_images, default_rows(pipe, [2]), tmp_path / "coco",
                                  num_samples=3, batch_size=2, fid_factory=_fid, real_size=128, patch_size=64,
                                  latency=True, latency_batch=2, latency_warmup=1, latency_iterations=1)

    first = run()
    assert set(first["metrics"]) == {"sd15-2", "sd15-2-uplift"}
    uplift, base = first["metrics"]["sd15-2-uplift"], first["metrics"]["sd15-2"]
    assert uplift["resolution"] == "64->128" and base["resolution"] == "64"
    assert uplift["fid"] >= 0 and uplift["patch_fid"] >= 0 and base["patch_fid"] is None
    assert uplift["latency"]["batch_size"] == 2 and uplift["latency"]["seconds_per_image"] > 0
    assert Image.open(tmp_path / "coco" / "images" / "sd15-2-uplift" / "00000.png").size == (128, 128)
    table = (tmp_path / "coco" / "table.md").read_text()
    assert "| Model | Steps | Method | Params (M) | Resolution | s/img ↓ | FID ↓ |" in table

    (tmp_path / "coco" / "results.json").unlink()
    (tmp_path / "coco" / "images" / "sd15-2-uplift" / "00002.png").unlink()
    second = run()
    for results in (first, second):
        for m in results["metrics"].values():
            m.pop("latency")
    assert _stable(second) == _stable(first)


def test_relaion_end_to_end_with_clip(pipe, real_images, tmp_path):
    pairs = load_relaion_pairs(real_images, min_side=128, num_samples=None)
    assert [p.split("/")[-1] for _, p in pairs] == ["im0.png", "im1.png", "im2.png"]  # im3 is 90x90
    table = tmp_path / "data.csv"
    table.write_text("image_path,caption\nim0.png,a cat\nim3.png,dog\nmissing.png,x\n")
    assert load_relaion_pairs(table, min_side=64, images_root=real_images) == [
        ("a cat", str(real_images / "im0.png")), ("dog", str(real_images / "im3.png"))]

    clip = tiny_clip(tmp_path)
    results = run_relaion_benchmark(real_images, default_rows(pipe, [2, 3], baseline=False), tmp_path / "relaion",
                                    min_side=128, num_samples=None, fid_factory=_fid,
                                    clip_factory=lambda: CLIPScorer(clip), real_size=128, patch_size=64, limit=2)
    assert set(results["metrics"]) == {"sd15-2-uplift", "sd15-3-uplift"}
    for m in results["metrics"].values():
        assert m["num_images"] == 2 and m["clip_score"] >= 0 and m["fid"] >= 0 and m["patch_fid"] >= 0
    assert "| CLIP ↑ | FID ↓ | p-FID ↓ |" in (tmp_path / "relaion" / "table.md").read_text()
    with pytest.raises(ValueError, match="other caption-image pairs"):
        run_relaion_benchmark(table, default_rows(pipe, [2], baseline=False), tmp_path / "relaion", min_side=64,
                              images_root=real_images, fid_factory=None)
    with pytest.raises(ValueError, match="caption column"):
        (tmp_path / "bad.csv").write_text("image_path,words\nim0.png,x\n")
        load_relaion_pairs(tmp_path / "bad.csv")


# ---------------------------------------------------------------- UPLiFT + refine rows, the time of each stage
REFINE_KEY = "sd15-2-uplift-refine0.5-4steps"


def test_refine_strength_zero_is_uplift_alone(pipe):
    plain, zero = uplift_row(pipe, 2, 2), uplift_row(pipe, 2, 2, refine_strength=0.0, refine_steps=4)
    assert (zero.key, zero.method, zero.fingerprint) == (plain.key, plain.method, plain.fingerprint)
    assert np.array_equal(zero.generate(["a cat"], generators(0, [0])), plain.generate(["a cat"], generators(0, [0])))
    refined = uplift_row(pipe, 2, 2, refine_strength=0.5, refine_steps=4)
    assert refined.key == REFINE_KEY and refined.method == "UPLiFT + refine 0.5 (4 steps)"
    assert refined.fingerprint == dict(plain.fingerprint, refine_strength=0.5, refine_steps=4)
    with pytest.raises(ValueError, match="needs upscale > 1"):
        uplift_row(pipe, 2, 1, refine_strength=0.3)


def test_refine_rows_stage_times_and_resume(pipe, real_images, tmp_path):
    annotations, out = _coco_annotations(tmp_path), tmp_path / "coco"
    common = dict(num_samples=3, batch_size=2, fid_factory=None, real_size=128, patch_size=64)
    first = run_coco_benchmark(annotations, real_images, default_rows(pipe, [2]), out, **common)
    fingerprints = json.loads((out / "fingerprints.json").read_text())
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").rglob("*.png")}

    rows = default_rows(pipe, [2], refine_strength=0.5, refine_steps=4)
    assert [r.key for r in rows] == ["sd15-2", "sd15-2-uplift", REFINE_KEY]
    results = run_coco_benchmark(annotations, real_images, rows, out, latency=True, latency_batch=1,
                                 latency_warmup=0, latency_iterations=1, **common)
    # the rows of the first run resume: same fingerprints, their images kept, their metrics unchanged
    assert {k: v for k, v in json.loads((out / "fingerprints.json").read_text()).items() if k in fingerprints} \
        == fingerprints
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    for key, m in first["metrics"].items():
        assert {k: v for k, v in results["metrics"][key].items() if k != "latency"} == m
    refined = results["metrics"][REFINE_KEY]
    assert refined["method"] == "UPLiFT + refine 0.5 (4 steps)" and refined["resolution"] == "64->128"
    a, b = (np.array(Image.open(out / "images" / k / "00000.png")) for k in ("sd15-2-uplift", REFINE_KEY))
    assert a.shape == b.shape == (128, 128, 3) and not np.array_equal(a, b)

    stages = {k: m["latency"]["stage_seconds_per_image"] for k, m in results["metrics"].items()}
    assert set(stages["sd15-2"]) == {"base", "decode"}
    assert set(stages["sd15-2-uplift"]) == {"base", "uplift", "decode"}
    assert set(stages[REFINE_KEY]) == {"base", "uplift", "refine", "decode"}
    assert all(v > 0 for s in stages.values() for v in s.values())
    assert results["timings"][f"generate/{REFINE_KEY}/refine"] > 0  # the generation's stages, this run's images
    assert f"generate/{REFINE_KEY}/refine" not in first["timings"]
    table = (out / "table.md").read_text()
    assert "| s/img ↓ | FID ↓ | base s | UPLiFT s | refine s | decode s |" in table
    assert "| SD1.5 | 2 | UPLiFT + refine 0.5 (4 steps) |" in table


def test_eval_coco_refine_command(saved, real_images, tmp_path, capsys):
    folder, _ = saved
    args = ["eval", "coco", "--annotations", str(_coco_annotations(tmp_path)), "--images", str(real_images),
            "--pipeline", str(folder), "--upsampler", str(folder / "upsampler"), "--steps", "2", "--num-samples",
            "2", "--batch-size", "2", "--fid-backend", "none", "--device", "cpu", "--output", str(tmp_path / "out")]
    assert main([*args, "--refine", "0.5", "--refine-steps", "4", "--no-baseline", "--latency", "--latency-warmup",
                 "0", "--latency-iterations", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| UPLiFT |" in printed and "| UPLiFT + refine 0.5 (4 steps) |" in printed and "refine s" in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["metrics"][REFINE_KEY]["latency"]["stage_seconds_per_image"]) == {"base", "uplift", "refine",
                                                                                          "decode"}
    for extra, message in ((["--refine", "1.5"], "--refine must be a strength in [0, 1]"),
                           (["--refine-steps", "3"], "--refine-steps needs --refine")):
        assert main([*args, *extra]) == 2
        assert message in capsys.readouterr().err

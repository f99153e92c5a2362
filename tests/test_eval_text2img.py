"""COCO and reLAION benchmarks end to end on a tiny fixture: a tiny UPLiFTPipeline (tests/tiny_sd.py), generated
real images with captions, a small FID feature extractor and a tiny CLIP; resuming gives the same results.json."""

import json

import numpy as np
import pytest
from eval_helpers import SmallFeatures, tiny_clip
from PIL import Image
from tiny_sd import build_pipeline
from uplift_diffusion.eval.coco import load_coco_pairs, run_coco_benchmark
from uplift_diffusion.eval.metrics import FID, CLIPScorer
from uplift_diffusion.eval.relaion import load_relaion_pairs, run_relaion_benchmark
from uplift_diffusion.eval.text2img import default_rows


@pytest.fixture(scope="module")
def pipe(tmp_path_factory):
    pipe = build_pipeline(tmp_path_factory.mktemp("tiny_sd"))  # 64x64 low res, 128x128 with UPLiFT
    pipe.set_progress_bar_config(disable=True)
    return pipe


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


def test_coco_end_to_end_and_resume(pipe, real_images, tmp_path):
    annotations = tmp_path / "captions.json"
    annotations.write_text(json.dumps({
        "images": [{"id": i, "file_name": f"im{i}.png"} for i in range(4)] + [{"id": 9, "file_name": "gone.png"}],
        "annotations": [{"image_id": i, "caption": c} for i, c in [(0, "a cat"), (0, "cat"), (1, "a dog"),
                                                                    (2, "cat dog"), (3, "dog"), (9, "x")]],
    }))
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

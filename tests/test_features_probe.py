"""Linear-probe evaluation: metrics, dataset layouts, the end-to-end pipeline on a tiny generated VOC, resuming."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from features_helpers import tiny_extractor
from PIL import Image
from safetensors.torch import load_file

from uplift_diffusion.features.probe import (
    CITYSCAPES_EVAL_IDS,
    ProbeConfig,
    build_dataset,
    confusion_matrix,
    depth_scores,
    run_probe_evaluation,
    segmentation_scores,
)

SIZE = 28  # patch 14: a 2x2 token grid; UPLiFT's 4 steps give 32 pixels, resized to 28


def _direct_scores(pred: np.ndarray, gt: np.ndarray, num_classes: int):
    """mIoU and accuracy by counting pixels class by class (no confusion matrix)."""
    valid = gt != 255
    ious = []
    for c in range(num_classes):
        union = np.sum(((pred == c) | (gt == c)) & valid)
        if union:
            ious.append(np.sum((pred == c) & (gt == c) & valid) / union)
    return float(np.mean(ious)), float(np.sum((pred == gt) & valid) / np.sum(valid))


def test_confusion_matrix_metrics_match_direct_counts():
    generator = torch.Generator().manual_seed(0)
    gt = torch.randint(0, 5, (3, 20, 20), generator=generator)
    gt[:, :2] = 255
    gt[gt == 4] = 3  # class 4 never in the ground truth ...
    pred = torch.randint(0, 5, (3, 20, 20), generator=generator)
    pred[pred == 2] = 1  # ... class 2 never predicted; class 5 (of 6) never occurs at all
    confmat = confusion_matrix(pred, gt, 6)
    assert confmat.sum() == (gt != 255).sum()
    scores = segmentation_scores(confmat)
    miou, accuracy = _direct_scores(pred.numpy(), gt.numpy(), 6)
    assert scores["miou"] == pytest.approx(miou, abs=1e-12)
    assert scores["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-12)
    assert scores["iou_per_class"][5] is None and scores["iou_per_class"][4] == 0.0
    with pytest.raises(ValueError, match="labels must be in"):
        confusion_matrix(pred, torch.full_like(gt, 7), 6)


def test_depth_scores():
    gt = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # 0 = invalid
    pred = torch.tensor([[1.1, 3.0], [4.0, 9.0]])
    scores = depth_scores(pred, gt, 1e-3, 10.0)
    assert scores["delta1"] == pytest.approx(2 / 3)
    assert scores["rmse"] == pytest.approx(np.sqrt((0.01 + 1.0 + 0.0) / 3))


def _write_voc(root, n_train=4, n_val=2):
    """A tiny VOC2012: colour-coded regions (red = class 1, blue = class 2, grey = background), 255 boundaries."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True)
    rng = np.random.default_rng(0)
    palette = [0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9)
    names = {"train": [], "val": []}
    for i in range(n_train + n_val):
        label = np.zeros((36, 44), dtype=np.uint8)
        split = rng.integers(8, 28)
        label[:, :split] = 1
        label[rng.integers(0, 18):, split + 4:] = 2
        image = np.full((36, 44, 3), 120, dtype=np.uint8)
        image[label == 1] = (220, 30, 30)
        image[label == 2] = (30, 30, 220)
        label[:, split - 1:split + 1] = 255
        name = f"2007_{i:06d}"
        Image.fromarray(image).save(base / "JPEGImages" / f"{name}.jpg", quality=95)
        indexed = Image.fromarray(label, mode="P")
        indexed.putpalette(palette)
        indexed.save(base / "SegmentationClass" / f"{name}.png")
        names["train" if i < n_train else "val"].append(name)
    for split, ids in names.items():
        (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root / "VOCdevkit"


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    return _write_voc(tmp_path_factory.mktemp("voc"))


def test_probe_pipeline_end_to_end(voc_root, tmp_path):
    extractor = tiny_extractor(14)
    train = build_dataset("voc", voc_root, "train", size=SIZE)
    val = build_dataset("voc", voc_root, "val", size=SIZE)
    assert (len(train), len(val), train.num_classes) == (4, 2, 21)
    image, label = val[0]
    assert image.shape == (3, SIZE, SIZE) and label.shape == (SIZE, SIZE) and label.dtype == torch.int64
    assert set(label.unique().tolist()) <= {0, 1, 2, 255} and (label == 255).any()

    config = ProbeConfig(epochs=3, batch_size=2, lr=5e-2)
    run = run_probe_evaluation(extractor, train, val, tmp_path, config=config, backbone_name="tiny")
    results = json.loads(run.results_path.read_text())["results"]
    assert set(results) == {"voc/nearest", "voc/bilinear", "voc/uplift"}
    assert results["voc/uplift"]["num_parameters"] == sum(p.numel() for p in extractor.upsampler.parameters())
    table = run.table_path.read_text()
    assert "| Method | Params (M) | Time (ms) | voc mIoU ↑ | voc Acc ↑ |" in table
    assert all(f"| {m} |" in table for m in ("nearest", "bilinear", "uplift"))

    # The reported numbers equal a direct per-class count of the saved probes' predictions.
    normalised = lambda x: (x - torch.tensor((0.485, 0.456, 0.406))[:, None, None]) / torch.tensor(  # noqa: E731
        (0.229, 0.224, 0.225))[:, None, None]
    for method in ("bilinear", "uplift"):
        weights = load_file(str(tmp_path / "probes" / f"voc_{method}.safetensors"))
        preds, gts = [], []
        for image, label in val:
            x = normalised(image)[None]
            tokens = extractor.backbone.model.forward_features(x)[:, 1:]
            backbone = tokens.transpose(1, 2).reshape(1, -1, 2, 2)
            if method == "bilinear":
                dense = F.interpolate(backbone, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
            else:
                dense = extractor.upsampler(x, backbone, iterations=4, output_size=(SIZE, SIZE))
            logits = F.conv2d(dense, weights["weight"], weights["bias"])
            preds.append(logits.argmax(1)[0].numpy())
            gts.append(label.numpy())
        miou, accuracy = _direct_scores(np.stack(preds), np.stack(gts), 21)
        scores = results[f"voc/{method}"]["scores"]
        assert scores["miou"] == pytest.approx(miou, abs=1e-9)
        assert scores["pixel_accuracy"] == pytest.approx(accuracy, abs=1e-9)
    assert results["voc/bilinear"]["scores"]["pixel_accuracy"] > 0.5  # the probe learnt the colour-coded classes

    # A second run finds everything done and changes nothing.
    before = run.results_path.read_text()
    run_probe_evaluation(extractor, train, val, tmp_path, config=config)
    assert run.results_path.read_text() == before


def test_probe_training_resumes_to_the_same_probe(voc_root, tmp_path):
    extractor = tiny_extractor(14)
    train = build_dataset("voc", voc_root, "train", size=SIZE)
    val = build_dataset("voc", voc_root, "val", size=SIZE)
    config = ProbeConfig(epochs=2, batch_size=2, lr=5e-2, checkpoint_every=1)
    interrupted = run_probe_evaluation(extractor, train, val, tmp_path / "a", ["bilinear"], config, max_steps=3)
    assert interrupted.results["results"] == {}  # stopped mid-training: no result yet
    state = torch.load(tmp_path / "a" / "probes" / "voc_bilinear.state.pt", weights_only=True)
    assert state["step"] == 3
    resumed = run_probe_evaluation(extractor, train, val, tmp_path / "a", ["bilinear"], config)
    straight = run_probe_evaluation(extractor, train, val, tmp_path / "b", ["bilinear"], config)
    a = load_file(str(tmp_path / "a" / "probes" / "voc_bilinear.safetensors"))
    b = load_file(str(tmp_path / "b" / "probes" / "voc_bilinear.safetensors"))
    for key in a:
        torch.testing.assert_close(a[key], b[key])
    assert resumed.results["results"]["voc/bilinear"]["scores"]["miou"] == pytest.approx(
        straight.results["results"]["voc/bilinear"]["scores"]["miou"])
    with pytest.raises(ValueError, match="other settings"):
        (tmp_path / "a" / "probes" / "voc_bilinear.safetensors").unlink()
        (tmp_path / "a" / "results.json").unlink()
        run_probe_evaluation(extractor, train, val, tmp_path / "a", ["bilinear"],
                             ProbeConfig(epochs=5, batch_size=2))


def test_a_rerun_with_other_settings_is_refused_not_reused(voc_root, tmp_path):
    """Finished results are reused only for the same backbone, upsampler, probe settings and data."""
    extractor = tiny_extractor(14)
    train = build_dataset("voc", voc_root, "train", size=SIZE)
    val = build_dataset("voc", voc_root, "val", size=SIZE)
    run_probe_evaluation(extractor, train, val, tmp_path, ["bilinear", "uplift"], ProbeConfig(epochs=1, batch_size=2))
    before = (tmp_path / "results.json").read_text()
    with pytest.raises(ValueError, match=r"voc/bilinear.*other settings.*epochs: 1 -> 2"):
        run_probe_evaluation(extractor, train, val, tmp_path, ["bilinear"], ProbeConfig(epochs=2, batch_size=2))
    other = tiny_extractor(14)
    with torch.no_grad():
        next(other.upsampler.parameters()).add_(1.0)  # another upsampler, same backbone
    run_probe_evaluation(other, train, val, tmp_path, ["bilinear"], ProbeConfig(epochs=1, batch_size=2))  # unused
    with pytest.raises(ValueError, match=r"voc/uplift.*other settings.*upsampler"):
        run_probe_evaluation(other, train, val, tmp_path, ["uplift"], ProbeConfig(epochs=1, batch_size=2))
    assert (tmp_path / "results.json").read_text() == before


def test_labels_of_another_size_or_beyond_the_classes_are_refused(tmp_path):
    for split in ("train", "val"):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "labels").mkdir(parents=True)
        Image.new("RGB", (32, 24)).save(tmp_path / split / "images" / "a.png")
    Image.fromarray(np.zeros((12, 16), np.uint8)).save(tmp_path / "train" / "labels" / "a.png")  # half the size
    Image.fromarray(np.full((24, 32), 7, np.uint8)).save(tmp_path / "val" / "labels" / "a.png")  # class 7 of 3
    with pytest.raises(ValueError, match=r"labels/a.png is 16x12 but its image .* is 32x24"):
        build_dataset("folder", tmp_path, "train", num_classes=3, size=SIZE)[0]
    with pytest.raises(ValueError, match=r"class value\(s\) 7 but there are 3 classes"):
        build_dataset("folder", tmp_path, "val", num_classes=3, size=SIZE)[0]


def test_standard_layouts_map_labels(tmp_path):
    # Cityscapes: labelIds -> the 19 train ids, everything else ignored.
    city = tmp_path / "cityscapes"
    (city / "leftImg8bit" / "val" / "aachen").mkdir(parents=True)
    (city / "gtFine" / "val" / "aachen").mkdir(parents=True)
    ids = np.array([[7, 26], [33, 4]], dtype=np.uint8).repeat(16, 0).repeat(16, 1)
    image_file = city / "leftImg8bit/val/aachen/a_000000_000019_leftImg8bit.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image_file)
    Image.fromarray(ids).save(city / "gtFine/val/aachen/a_000000_000019_gtFine_labelIds.png")
    _, label = build_dataset("cityscapes", city, "val", size=32)[0]
    assert label[0, 0] == 0 and label[0, 31] == CITYSCAPES_EVAL_IDS.index(26) == 13
    assert label[31, 0] == 18 and label[31, 31] == 255
    # COCO-Stuff: fine stuffthingmap values -> 27 coarse classes (0 person -> 9, 105 clouds -> sky 23).
    coco = tmp_path / "coco"
    for sub in ("images/val2017", "annotations/val2017"):
        (coco / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(coco / "images/val2017/000000000139.jpg")
    Image.fromarray(np.array([[0, 105], [255, 170]], np.uint8).repeat(8, 0).repeat(8, 1)).save(
        coco / "annotations/val2017/000000000139.png")
    dataset = build_dataset("coco-stuff", coco, "val", size=16)
    assert dataset.num_classes == 27
    assert dataset[0][1][::8, ::8].tolist() == [[9, 23], [255, 18]]
    # ADE20K: images/ and annotations/ by split name; 151 classes as in JAFAR.
    ade = tmp_path / "ADEChallengeData2016"
    for sub in ("images/validation", "annotations/validation"):
        (ade / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(ade / "images/validation/ADE_val_00000001.jpg")
    Image.fromarray(np.full((16, 16), 150, np.uint8)).save(ade / "annotations/validation/ADE_val_00000001.png")
    dataset = build_dataset("ade20k", ade, "val", size=16)
    assert dataset.num_classes == 151 and dataset[0][1].max() == 150
    with pytest.raises(FileNotFoundError, match="ImageSets"):
        build_dataset("voc", tmp_path, "val")
    with pytest.raises(ValueError, match="num_classes"):
        build_dataset("folder", tmp_path, "val")


def test_depth_probe_from_folder(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 2), ("val", 1)):
        (tmp_path / split / "images").mkdir(parents=True)
        (tmp_path / split / "depth").mkdir(parents=True)
        for i in range(count):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(
                tmp_path / split / "images" / f"{i}.png")
            depth = np.linspace(1, 5, 32 * 32, dtype=np.float32).reshape(32, 32)
            np.save(tmp_path / split / "depth" / f"{i}.npy", depth)
    train = build_dataset("folder", tmp_path, "train", task="depth", size=SIZE)
    val = build_dataset("folder", tmp_path, "val", task="depth", size=SIZE)
    run = run_probe_evaluation(tiny_extractor(14), train, val, tmp_path / "out", ["nearest"],
                               ProbeConfig(task="depth", epochs=1, batch_size=2))
    scores = run.results["results"][f"{val.name}/nearest"]["scores"]
    assert 0.0 <= scores["delta1"] <= 1.0 and np.isfinite(scores["rmse"])
    assert "δ1 ↑" in run.table_path.read_text()


def test_command_line_errors(tmp_path, capsys):
    from uplift_diffusion.cli import main

    assert main(["probe", "--dataset", "voc", "--root", str(tmp_path), "-o", str(tmp_path / "out")]) == 2
    assert "ImageSets" in capsys.readouterr().err


def test_probe_command_choices_match_the_library():
    # The command lists its choices without importing torch (fast --help); they must stay the library's.
    from uplift_diffusion.commands import probe as command
    from uplift_diffusion.features.probe import METHODS, SEGMENTATION_DATASETS, TASKS

    assert command.DATASETS == (*SEGMENTATION_DATASETS, "folder")
    assert command.METHODS == METHODS and command.TASKS == TASKS

"""Linear-probe evaluation of pixel-dense features (the JAFAR protocol that the UPLiFT paper follows, §4, App. A).

A frozen backbone + upsampler turns ``size``x``size`` images (448 in the paper) into ``size``x``size`` features; a
1x1 convolution (the linear probe) is trained on top for semantic segmentation (cross-entropy, label 255 ignored;
mIoU and pixel accuracy from a confusion matrix) or monocular depth (256 depth bins, scale-invariant log loss; δ1
and RMSE). The baselines "nearest" and "bilinear" upsample the backbone features directly. Everything is resumable:
probe training state is checkpointed atomically, finished probes are kept as safetensors, and the results JSON /
Markdown table (like the paper's Table 1) are rewritten atomically after every finished (dataset, method).

Protocol defaults (JAFAR's public evaluation config): images resized (shorter side, bilinear) and centre-cropped to
448, labels likewise with nearest; 20 epochs, AdamW lr 5e-4, batch size 2, random horizontal flips. As in AnyUp /
UPLiFT the cosine learning-rate schedule runs over the total number of steps (JAFAR's stepped a per-epoch schedule
every batch). Command line: ``uplift-diffusion probe --help``.

Modules: :mod:`.datasets` (layouts, :class:`DenseLabelDataset`), :mod:`.metrics` (confusion matrix, mIoU, depth
scores), :mod:`.training` (features, probes, training loop), :mod:`.evaluation` (the resumable whole run).
"""

from .datasets import (
    CITYSCAPES_EVAL_IDS,
    COCO_STUFF_COARSE,
    IGNORE_INDEX,
    SEGMENTATION_DATASETS,
    TASKS,
    DatasetSpec,
    DenseLabelDataset,
    build_dataset,
)
from .evaluation import ProbeRun, markdown_table, run_probe_evaluation
from .metrics import confusion_matrix, depth_scores, segmentation_scores
from .training import (
    METHODS,
    DenseFeatures,
    DepthProbe,
    ProbeConfig,
    evaluate_probe,
    iterations_for,
    scale_invariant_log_loss,
    train_probe,
)

__all__ = [
    "CITYSCAPES_EVAL_IDS",
    "COCO_STUFF_COARSE",
    "IGNORE_INDEX",
    "METHODS",
    "SEGMENTATION_DATASETS",
    "TASKS",
    "DatasetSpec",
    "DenseFeatures",
    "DenseLabelDataset",
    "DepthProbe",
    "ProbeConfig",
    "ProbeRun",
    "build_dataset",
    "confusion_matrix",
    "depth_scores",
    "evaluate_probe",
    "iterations_for",
    "markdown_table",
    "run_probe_evaluation",
    "scale_invariant_log_loss",
    "segmentation_scores",
    "train_probe",
]

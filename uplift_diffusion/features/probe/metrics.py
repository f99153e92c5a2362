"""Linear-probe scores: a dataset-level confusion matrix (torchmetrics) -> mIoU, pixel accuracy and per-class IoU;
depth δ1 and RMSE (torchmetrics) per image."""

from __future__ import annotations

import math

import torch
from torchmetrics.functional.classification import multiclass_confusion_matrix
from torchmetrics.functional.regression import mean_squared_error

from ...utils.errors import InputError
from .datasets import IGNORE_INDEX


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int,
                     ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """[K, K] int64 counts, rows = ground-truth class, columns = predicted class; ``ignore_index`` pixels skipped."""
    if pred.shape != target.shape:
        raise InputError(f"pred shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
    labels = target[target != ignore_index]
    if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
        raise InputError(f"labels must be in [0, {num_classes}) or {ignore_index}, got values in "
                         f"[{labels.min().item()}, {labels.max().item()}]")
    counts = multiclass_confusion_matrix(pred.long(), target.long(), num_classes, ignore_index=ignore_index,
                                         validate_args=False)
    return counts.long().cpu()


def segmentation_scores(confmat: torch.Tensor) -> dict:
    """mIoU (mean over classes present in the ground truth or the prediction), pixel accuracy and per-class IoU
    (``None`` for classes that never occur).

    The reduction of the (exact, integer) confusion matrix is done here in float64: torchmetrics' own Jaccard
    reduction works in float32, which would move the scores by ~1e-8 against a direct per-class count.
    """
    confmat = confmat.double()
    intersection = confmat.diag()
    union = confmat.sum(0) + confmat.sum(1) - intersection
    present = union > 0
    iou = torch.where(present, intersection / union.clamp_min(1), torch.full_like(union, float("nan")))
    total = confmat.sum()
    return {
        "miou": float(iou[present].mean()) if present.any() else float("nan"),
        "pixel_accuracy": float(intersection.sum() / total) if total > 0 else float("nan"),
        "iou_per_class": [None if math.isnan(v) else float(v) for v in iou.tolist()],
    }


def depth_scores(pred: torch.Tensor, target: torch.Tensor, min_depth: float, max_depth: float) -> dict:
    """δ1 (share of pixels with max(pred/gt, gt/pred) < 1.25) and RMSE over the valid pixels of one image."""
    valid = (target > min_depth) & (target < max_depth)
    if not valid.any():
        return {"delta1": float("nan"), "rmse": float("nan")}
    p, t = pred[valid].double().clamp_min(1e-6), target[valid].double()
    ratio = torch.maximum(p / t, t / p)
    return {"delta1": float((ratio < 1.25).double().mean()), "rmse": float(mean_squared_error(p, t, squared=False))}

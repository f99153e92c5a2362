"""The whole linear-probe evaluation: one probe per method, trained and scored, with ``results.json`` and a
Table-1-style ``results.md`` rewritten atomically after every finished (dataset, method); resumable."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from ...utils import tables
from ...utils.errors import InputError
from ...utils.fingerprint import canonical, check_fingerprint, weights_hash
from ...utils.io import atomic_write, write_text_atomic
from .datasets import DenseLabelDataset
from .training import METHODS, DenseFeatures, ProbeConfig, _make_probe, evaluate_probe, train_probe


def _read_results(path: Path) -> dict:
    if not path.is_file():
        return {"results": {}}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise InputError(f"{path} is not valid JSON ({err}); move it away to start over") from None


def markdown_table(results: dict) -> str:
    """A Table-1-style Markdown table: one row per method, (mIoU, Acc) or (δ1, RMSE) columns per dataset."""
    entries = results.get("results", {})
    datasets = list(dict.fromkeys(e["dataset"] for e in entries.values()))
    methods = [m for m in METHODS if any(e["method"] == m for e in entries.values())]
    methods += sorted({e["method"] for e in entries.values()} - set(methods))
    header = ["Method", "Params (M)", "Time (ms)"]
    for d in datasets:
        task = next(e["task"] for e in entries.values() if e["dataset"] == d)
        header += [f"{d} mIoU ↑", f"{d} Acc ↑"] if task == "seg" else [f"{d} δ1 ↑", f"{d} RMSE ↓"]
    body = []
    for m in methods:
        rows = [e for e in entries.values() if e["method"] == m]
        times = [e["scores"]["ms_per_image"] for e in rows]
        row = [m, f"{rows[0]['num_parameters'] / 1e6:.2f}" if rows[0]["num_parameters"] else "-",
               f"{np.mean(times):.1f}"]
        for d in datasets:
            e = next((e for e in rows if e["dataset"] == d), None)
            if e is None:
                row += ["", ""]
            elif e["task"] == "seg":
                row += [f"{100 * e['scores']['miou']:.2f}", f"{100 * e['scores']['pixel_accuracy']:.2f}"]
            else:
                row += [f"{100 * e['scores']['delta1']:.2f}", f"{e['scores']['rmse']:.4f}"]
        body.append(row)
    return tables.markdown_table(header, body)


@dataclass
class ProbeRun:
    """What :func:`run_probe_evaluation` produced."""

    results_path: Path
    table_path: Path
    results: dict = field(default_factory=dict)


def _probe_fingerprint(extractor, method: str, train_set, val_set, config) -> dict:
    """Everything a finished probe's scores depend on: the backbone's and (for ``uplift``) the upsampler's weights,
    the probe settings (not the number of data workers) and the data (which pairs, at what size)."""
    settings = {k: v for k, v in asdict(config).items() if k not in ("num_workers", "checkpoint_every")}
    data = {name: {"pairs": _pairs_digest(ds.pairs), "size": ds.size, "num_classes": ds.num_classes,
                   "count": len(ds)} for name, ds in (("train", train_set), ("val", val_set))}
    return {"method": method, "backbone": weights_hash(extractor.backbone), "settings": settings, "data": data,
            "upsampler": weights_hash(extractor.upsampler) if method == "uplift" else None}


def _pairs_digest(pairs) -> str:
    """A short digest of the (image, label) file names in order (names: the same data from another working
    directory or mount point is the same data)."""
    import hashlib

    return hashlib.sha256("\n".join(f"{Path(a).name}|{Path(b).name}" for a, b in pairs).encode()).hexdigest()[:16]


def run_probe_evaluation(extractor, train_set: DenseLabelDataset, val_set: DenseLabelDataset, output_dir: str | Path,
                         methods: Sequence[str] = METHODS, config: ProbeConfig | None = None,
                         device: str | torch.device | None = None, backbone_name: str = "backbone",
                         max_steps: int | None = None) -> ProbeRun:
    """Train and evaluate one probe per method; resumable.

    Args:
        extractor: a :class:`~uplift_diffusion.features.UPLiFTFeatureExtractor` (backbone + UPLiFT), frozen.
        train_set / val_set: :class:`DenseLabelDataset` of the same task (images already ``size``x``size``).
        output_dir: gets ``results.json``, ``results.md``, ``probes/<dataset>_<method>.safetensors`` (finished
            probes) and ``probes/<dataset>_<method>.state.pt`` (training state, for resuming).
        methods: any of ``"uplift"``, ``"bilinear"``, ``"nearest"``.
        config: :class:`ProbeConfig` (its ``task`` must match the datasets).
        device: where to run (default: the extractor's device).
        backbone_name: recorded in the results.
        max_steps: stop after this many training steps in this call (for tests of resuming); results of unfinished
            methods are then missing.
    """
    from safetensors.torch import load_file, save_file

    config = config or ProbeConfig(task=train_set.task)
    if train_set.task != config.task or val_set.task != config.task:
        raise InputError(f"config.task={config.task!r} but the datasets are {train_set.task!r} / "
                         f"{val_set.task!r}")
    if train_set.num_classes != val_set.num_classes:
        raise InputError(f"train and val sets have {train_set.num_classes} and {val_set.num_classes} "
                         f"classes")
    device = torch.device(device) if device is not None else extractor.device
    extractor.to(device)
    output = Path(output_dir)
    (output / "probes").mkdir(parents=True, exist_ok=True)
    results_path, table_path = output / "results.json", output / "results.md"
    results = _read_results(results_path)
    for method in methods:
        key = f"{val_set.name}/{method}"
        fingerprint = _probe_fingerprint(extractor, method, train_set, val_set, config)
        if key in results["results"]:  # finished in an earlier run: reused only when made with these settings
            check_fingerprint(results["results"][key].get("fingerprint"), fingerprint,
                              f"the {key} result in {results_path}",
                              "choose another output folder (-o), or delete that folder to start over")
            continue
        features = DenseFeatures(extractor, method)
        stem = output / "probes" / f"{val_set.name}_{method}"
        weights = stem.with_suffix(".safetensors")
        if weights.is_file():
            probe = _make_probe(config, extractor.feature_dim, train_set.num_classes).to(device)
            probe.load_state_dict(load_file(str(weights), device=str(device)))
        else:
            probe = train_probe(features, train_set, config, stem.with_suffix(".state.pt"), device, max_steps,
                                desc=f"{val_set.name}/{method} probe")
            if probe is None:
                continue
            state = {k: v.detach().cpu().contiguous() for k, v in probe.state_dict().items()}
            atomic_write(weights, lambda tmp, s=state: save_file(s, tmp))
        scores = evaluate_probe(features, probe, val_set, config, device, desc=f"{val_set.name}/{method} eval")
        results["results"][key] = {
            "dataset": val_set.name, "method": method, "task": config.task, "backbone": backbone_name,
            "num_parameters": features.num_parameters, "num_train": len(train_set), "num_val": len(val_set),
            "size": val_set.size, "config": asdict(config), "scores": scores, "fingerprint": canonical(fingerprint),
        }
        write_text_atomic(results_path, json.dumps(results, indent=2) + "\n")
        write_text_atomic(table_path, markdown_table(results))
    return ProbeRun(results_path, table_path, results)

"""Classifier training on labels derived from the masks (``train.task: classification``).

A classifier (e.g. the ``classifier`` model: a backbone with global pooling, ``(B, K)`` logits)
trains on the same samples as a segmenter; each sample's class comes from its mask:

* ``K <= 2`` (one sigmoid output, or two softmax outputs): 1 when the sample holds any
  foreground (lesion present), else 0;
* ``K > 2``: the highest label value present in the sample (0 when empty), clamped to ``K - 1``
  (labels ordered by severity, e.g. 1 oedema, 2 tumour).

Validation classifies every slice of every validation case (2D / 2.5D; the whole volume in 3D)
and scores accuracy, balanced accuracy, precision, recall and F1 (binary: of the positive
class; several classes: mean over the foreground classes). Both reference and prediction
without any positive gives F1 = 1, as Dice does for empty masks. The best checkpoint is the one
with the highest ``val_f1``.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from delineo.infer.sliding import pad_to
from delineo.modelfile.checkpoint import read_checkpoint_file
from delineo.io.atomic import write_text_atomic
from delineo.sampling.patches import round_up, slab

#: the metric that selects the best classifier checkpoint (and drives reduce-on-plateau)
MONITOR = "val_f1"


def class_targets(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Label maps ``(B, [1,] *P)`` -> one class per sample ``(B,)`` (see the module notes)."""
    flat = y.reshape(y.shape[0], -1)
    if num_classes <= 2:
        return (flat > 0).any(1).long()
    return flat.amax(1).long().clamp(0, num_classes - 1)


def _classes_np(label_slices: np.ndarray, num_classes: int) -> np.ndarray:
    return class_targets(torch.from_numpy(np.ascontiguousarray(label_slices)), num_classes).numpy()


def classification_metrics(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present), and precision,
    recall and F1 of the positive class (mean over foreground classes when K > 2)."""
    truth, pred = np.asarray(truth, int), np.asarray(pred, int)
    n_cls = max(num_classes, 2)
    out: dict[str, float] = {"accuracy": float(np.mean(truth == pred)) if len(truth) else math.nan}
    recalls = [float(np.mean(pred[truth == c] == c)) for c in range(n_cls) if np.any(truth == c)]
    out["balanced_accuracy"] = float(np.mean(recalls)) if recalls else math.nan
    precision, recall, f1 = [], [], []
    for c in range(1, n_cls):
        tp = int(np.sum((pred == c) & (truth == c)))
        fp = int(np.sum((pred == c) & (truth != c)))
        fn = int(np.sum((pred != c) & (truth == c)))
        precision.append(tp / (tp + fp) if tp + fp else 1.0 if fn == 0 else 0.0)
        recall.append(tp / (tp + fn) if tp + fn else 1.0 if fp == 0 else 0.0)
        f1.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0)
    out.update(precision=float(np.mean(precision)), recall=float(np.mean(recall)), f1=float(np.mean(f1)))
    return out


@torch.no_grad()
def classify_volume(model: torch.nn.Module, image: np.ndarray, mode: str, axis: int, context: int,
                    min_size: list[int], divisor: int, device: torch.device,
                    memory_format: torch.memory_format = torch.contiguous_format,
                    batch_size: int = 32) -> np.ndarray:
    """Class probabilities ``(N, K)`` for every slice along ``axis`` of a ``(C, *S)`` volume
    (2D / 2.5D), or ``(1, K)`` for the whole volume (3D); inputs are zero-padded (centred) to at
    least the training patch size and to a multiple of ``divisor``."""
    model.eval()
    if mode == "3d":
        samples = [np.asarray(image)]
        n = 1
    else:
        n = image.shape[1 + axis]
        samples = None
    probs = []
    for i in range(0, n, batch_size):
        if samples is not None:
            batch = np.stack(samples)
        else:
            batch = np.stack([slab(np.asarray(image), axis, j, context if mode == "2.5d" else 0)
                              for j in range(i, min(i + batch_size, n))])
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        target = [max(round_up(s, divisor), p) for s, p in zip(x.shape[2:], min_size)]
        x, _ = pad_to(x, target)
        x = x.to(device).contiguous(memory_format=memory_format)
        out = model(x)
        if isinstance(out, (list, tuple)):
            out = out[0]
        out = out.float()
        probs.append((torch.sigmoid(out) if out.shape[1] == 1 else torch.softmax(out, 1)).cpu().numpy())
    return np.concatenate(probs)


def predicted_classes(probs: np.ndarray) -> np.ndarray:
    return (probs[:, 0] >= 0.5).astype(int) if probs.shape[1] == 1 else probs.argmax(1)


def slice_classes(label: np.ndarray, mode: str, axis: int, num_classes: int) -> np.ndarray:
    """Reference class of every slice along ``axis`` of a ``(*S)`` label volume (3D: one)."""
    lab = np.asarray(label)
    if mode == "3d":
        return _classes_np(lab[None], num_classes)
    return _classes_np(np.moveaxis(lab, axis, 0), num_classes)


def validate_classifier(trainer: Any, save_dirs: list[Path]) -> dict[str, float]:
    """Classify every slice of the trainer's validation cases; write ``slices.csv`` with the
    per-slice reference, prediction and probability into each of ``save_dirs``."""
    m = trainer.meta
    truth, pred, rows = [], [], []
    for case in trainer.val_cases:
        cached = trainer.cache.load(case)
        probs = classify_volume(trainer.model, cached.image, m.mode, m.axis, m.context, m.patch_size,
                                m.divisor, trainer.device, trainer.memory_format)
        ref = slice_classes(cached.label, m.mode, m.axis, m.out_channels)
        cls = predicted_classes(probs)
        truth.append(ref)
        pred.append(cls)
        score = probs[:, 0] if probs.shape[1] == 1 else 1.0 - probs[:, 0]  # P(positive / any foreground)
        rows += [(case.case_id, j, int(r), int(c), float(s)) for j, (r, c, s) in enumerate(zip(ref, cls, score))]
    trainer.model.train()
    metrics = classification_metrics(np.concatenate(truth), np.concatenate(pred), m.out_channels)
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["case", "slice", "reference", "prediction", "probability"])
    w.writerows((c, j, r, p, f"{s:.6g}") for c, j, r, p, s in rows)
    for folder in save_dirs:
        folder.mkdir(parents=True, exist_ok=True)
        write_text_atomic(folder / "slices.csv", buf.getvalue())
    return {f"val_{k}": v for k, v in metrics.items()}


def evaluate_classifier_run(run_dir: Path, predictions: str = "best") -> dict[str, Any]:
    """Score ``predictions/<predictions>/slices.csv`` of a classifier run into
    ``metrics/summary.json``; ``mean_dice`` is NaN (no masks are predicted)."""
    from delineo.config import load_config
    from delineo.errors import InputError

    path = Path(run_dir) / "predictions" / predictions / "slices.csv"
    if not path.is_file():
        raise InputError(f"{path}: no slice predictions; train the classifier with validation first.")
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    cfg = load_config(Path(run_dir) / "config.yaml")
    ckpt_meta = None
    best = Path(run_dir) / "checkpoints" / "best.pt"
    if best.is_file():
        ckpt_meta = read_checkpoint_file(best)["meta"]
    k = int(ckpt_meta["out_channels"]) if ckpt_meta else int(cfg.model.get("out_channels", 1))
    truth = np.array([int(r["reference"]) for r in rows])
    pred = np.array([int(r["prediction"]) for r in rows])
    summary: dict[str, Any] = {"task": "classification", "n_cases": len({r["case"] for r in rows}),
                               "n_slices": len(rows), **classification_metrics(truth, pred, k)}
    write_text_atomic(Path(run_dir) / "metrics" / "summary.json", json.dumps(summary, indent=1))
    return {**summary, "mean_dice": math.nan}

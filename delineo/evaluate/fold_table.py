"""Decoding variants compared across cross-validation folds: the chest X-ray (SIIM-ACR) table.

The published pneumothorax solutions judged each trained fold by how its probabilities were
turned into masks ({argmax, threshold, TTA}) and whether a classifier gated them ({cascade,
baseline}), and reported, per variant, the mean and standard deviation over folds. This module
is that bookkeeping, apart from any network, so that it can be checked on hand-made arrays:

* an image is reduced to three counts, ``(|P & R|, |P|, |R|)`` (:func:`image_counts`);
* the score of an image is its Dice with *both empty = 1* (the challenge's rule; one empty = 0);
* per fold and variant: the mean per-image Dice, and the *pooled* Dice and IoU (counts summed
  over the fold's images first, so large masks weigh more and empty images weigh nothing);
* per variant: mean and (population) standard deviation of those three numbers over folds
  (:func:`fold_table`), printed as a Markdown table by :func:`format_fold_table`.

The two searches a variant may need are here too, both choosing on validation images only:
the pixel threshold (:func:`search_pixel_threshold`, a grid) and the classifier gate's
threshold (:func:`search_gate_threshold`, every distinct score; ties take the middle
candidate, as the pipeline's gate stage does).
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np

#: counts of one image: (intersection, predicted voxels, reference voxels)
Counts = tuple[int, int, int]


def image_counts(pred: np.ndarray, ref: np.ndarray) -> Counts:
    """``(|P & R|, |P|, |R|)`` of two binary masks of one image (any shape, same shape)."""
    p, r = np.asarray(pred, bool), np.asarray(ref, bool)
    if p.shape != r.shape:
        raise ValueError(f"prediction {p.shape} and reference {r.shape} differ in shape")
    return int(np.count_nonzero(p & r)), int(np.count_nonzero(p)), int(np.count_nonzero(r))


def image_dice(counts: Counts) -> float:
    """Dice of one image from its counts; both empty = 1, one empty = 0."""
    inter, p, r = counts
    return 1.0 if p + r == 0 else 2.0 * inter / (p + r)


def pooled_scores(counts: Sequence[Counts]) -> tuple[float, float]:
    """(Dice, IoU) of the counts summed over images; all empty = (1, 1)."""
    inter = sum(c[0] for c in counts)
    total = sum(c[1] + c[2] for c in counts)
    if total == 0:
        return 1.0, 1.0
    return 2.0 * inter / total, inter / (total - inter)


def fold_scores(counts: Sequence[Counts]) -> dict[str, float]:
    """One fold's images -> mean per-image Dice, pooled Dice, pooled IoU and the image count."""
    if not counts:
        raise ValueError("a fold without images has no score")
    dice, iou = pooled_scores(counts)
    return {"dice_per_image": float(np.mean([image_dice(c) for c in counts])), "dice_pooled": dice,
            "iou_pooled": iou, "images": len(counts)}


def fold_table(per_fold: Mapping[int, Mapping[str, Sequence[Counts]]]) -> list[dict[str, float | str | int]]:
    """``{fold: {variant: [counts per image]}}`` -> one row per variant (in first-seen order)
    with ``<score>_mean`` and ``<score>_std`` over folds for the three scores of
    :func:`fold_scores` and ``folds``. Standard deviation: population (ddof 0; 0 for one
    fold). Every fold must hold every variant, so that all rows average the same folds."""
    if not per_fold:
        raise ValueError("no folds")
    variants: list[str] = []
    for fold in per_fold.values():
        variants += [v for v in fold if v not in variants]
    rows = []
    for v in variants:
        missing = [f for f, fold in per_fold.items() if v not in fold]
        if missing:
            raise ValueError(f"variant {v!r} is missing in fold(s) {missing}")
        scores = [fold_scores(per_fold[f][v]) for f in per_fold]
        row: dict[str, float | str | int] = {"variant": v, "folds": len(scores)}
        for key in ("dice_per_image", "dice_pooled", "iou_pooled"):
            vals = np.array([s[key] for s in scores], float)
            row[f"{key}_mean"], row[f"{key}_std"] = float(vals.mean()), float(vals.std())
        rows.append(row)
    return rows


def format_fold_table(rows: Sequence[Mapping[str, float | str | int]]) -> str:
    """Markdown: variant | Dice per image | pooled Dice | pooled IoU, each ``mean ± std``."""
    out = ["| variant | Dice per image | pooled Dice | pooled IoU |", "|---|---|---|---|"]
    for r in rows:
        cells = [f"{r[f'{k}_mean']:.3f} ± {r[f'{k}_std']:.3f}" for k in ("dice_per_image", "dice_pooled", "iou_pooled")]
        out.append(f"| {r['variant']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def search_pixel_threshold(probs: Sequence[np.ndarray], refs: Sequence[np.ndarray],
                           grid: Sequence[float] = tuple(np.round(np.arange(0.05, 0.951, 0.05), 2))) -> float:
    """The grid value t whose masks ``p >= t`` give the highest mean per-image Dice on the given
    (validation) images; the lowest such t on ties."""
    if not probs:
        raise ValueError("no images to choose a threshold on")
    best_t, best = float(grid[0]), -math.inf
    for t in grid:
        d = float(np.mean([image_dice(image_counts(p >= t, r)) for p, r in zip(probs, refs)]))
        if d > best + 1e-12:
            best_t, best = float(t), d
    return best_t


def search_gate_threshold(scores: Sequence[float], dice_kept: Sequence[float], ref_empty: Sequence[bool]) -> float:
    """The classifier threshold g (an image passes when its score >= g) with the highest mean
    per-image Dice, where a stopped image scores 1 if its reference is empty and 0 if not.
    Candidates: 0 (all pass), midpoints of consecutive distinct scores, just above the
    highest (none pass); among ties the middle candidate."""
    s, kept = np.asarray(scores, float), np.asarray(dice_kept, float)
    stopped = np.asarray(ref_empty, bool).astype(float)
    if not len(s):
        raise ValueError("no images to choose a gate threshold on")
    u = np.unique(s)
    cands = np.unique(np.concatenate([[0.0], (u[:-1] + u[1:]) / 2, [np.nextafter(u[-1], np.inf)]]))
    mean = np.array([np.where(s >= g, kept, stopped).mean() for g in cands])
    winners = np.flatnonzero(mean >= mean.max() - 1e-12)
    return float(cands[winners[len(winners) // 2]])

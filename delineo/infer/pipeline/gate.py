"""Stage ``gate``: a classifier that empties another stage's mask where it says "negative".

The published chest X-ray systems put an image classifier in front of a U-Net trained on
positive images only: the U-Net always finds *something*, so normal images must be stopped
before it. Here the gate reads the output of an earlier stage (``input``, default the
previous one) and returns it with every voxel of a negative slice (a 2D / 2.5D classifier,
``level: slice``) or of a negative image (a 3D classifier, or ``level: image``: the highest
slice score) set to background. The order in the file is therefore segmenter, then gate; the
result is the same as running the classifier first.

Scores are P(any foreground) from classifiers trained with ``train.task: classification``
(one sigmoid output, or 1 - P(class 0)), averaged over the members and their folds; all
members must share preprocessing and slice axis, so that their slices are the same slices.
A slice is mapped back to the input grid through the classifier's own preprocessing (exact
for reorientation and cropping; nearest neighbour where it resampled); slices outside the
classifier's foreground crop hold no image and count as negative.

The threshold (``threshold: search``) is chosen on out-of-fold validation cases: every
distinct score is a candidate boundary, and the one with the highest mean per-case Dice of the
gated output wins (both empty = 1). With ``min_sensitivity``, only thresholds whose slice-level
sensitivity (reference-positive slices kept) reaches the floor compete. When several
thresholds tie, the middle one of them is taken (the most room on both sides). The table of
what the candidates did, the classifier's AUC and the Dice without the gate go into the file.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from pydantic import Field, model_validator

from delineo.config import Strict
from delineo.errors import ConfigError
from delineo.infer.pipeline.members import FoldCache, Member
from delineo.infer.pipeline.segment import MemberConfig
from delineo.infer.pipeline.stages import (BuildContext, CaseData, RunOptions, Stage, StageOutput, register_stage)
from delineo.io.image import Image
from delineo.preprocess.pipeline import GeometryRecord, preprocess, restore
from delineo.train.classify import classify_volume, slice_classes

log = logging.getLogger(__name__)

#: at most this many candidate rows are kept in the search table (evenly spread, plus the chosen one)
TABLE_ROWS = 25


class GateConfig(Strict):
    name: str
    kind: Literal["gate"] = "gate"
    input: Optional[str] = Field(None, description="the stage whose output is gated (default: the previous one)")
    runs: Optional[list[str]] = Field(None, description="classifier runs (train.task: classification)")
    members: Optional[list[MemberConfig]] = None
    level: Literal["auto", "slice", "image"] = Field(
        "auto", description="slice: per slice (2D/2.5D classifiers); image: the whole image; auto: by the classifier")
    threshold: Union[Literal["search"], float] = Field("search", description="P(positive) at or above which a slice passes")
    min_sensitivity: Optional[float] = Field(None, gt=0, le=1, description="search only thresholds keeping this "
                                             "share of the reference-positive slices")

    @model_validator(mode="after")
    def _check(self) -> "GateConfig":
        if (self.runs is None) == (self.members is None):
            raise ValueError("give either runs (one classifier) or members (several), not both or neither")
        if not isinstance(self.threshold, str) and not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold must be 'search' or a probability in [0, 1], got {self.threshold}")
        if self.min_sensitivity is not None and self.threshold != "search":
            raise ValueError("min_sensitivity applies to threshold: search only")
        return self


# ------------------------------------------------------------------------------ pure functions
def positive_scores(probs: np.ndarray) -> np.ndarray:
    """Classifier outputs (N, K) -> P(positive) per sample: the sigmoid output, or 1 - P(class 0)."""
    return (probs[:, 0] if probs.shape[1] == 1 else 1.0 - probs[:, 0]).astype(np.float32)


def score_volume(scores: np.ndarray, record: GeometryRecord, axis: Optional[int]) -> np.ndarray:
    """Per-slice scores along ``axis`` of a classifier's preprocessed grid (``axis`` None: one
    score for the image) -> a float32 volume on the input grid holding each voxel's score.
    Slices outside the preprocessing's crop along ``axis`` get 0 (they hold no image)."""
    if axis is None:
        return np.full(tuple(record.original_shape), float(np.max(scores)), dtype=np.float32)
    shape = tuple(record.resampled_to)
    start, stop = record.bbox[axis]
    if len(scores) != stop - start:
        raise ValueError(f"{len(scores)} slice scores for a crop of {stop - start} slices")
    vec = np.zeros(shape[axis], dtype=np.float32)
    vec[start:stop] = scores
    vol = np.broadcast_to(vec.reshape([-1 if d == axis else 1 for d in range(3)]), shape)
    whole = replace(record, bbox=tuple((0, int(s)) for s in shape))  # the in-plane crop does not matter
    return restore(np.ascontiguousarray(vol), whole, is_label=True)


def apply_gate(output: StageOutput, keep: np.ndarray, info: Optional[dict[str, Any]] = None) -> StageOutput:
    """``output`` with background wherever ``keep`` is False (probabilities: background 1)."""
    probs = output.probs.copy()
    drop = ~keep
    probs[1:, drop] = 0.0
    probs[0, drop] = 1.0
    mask = np.where(keep, output.mask, 0).astype(np.uint8)
    return StageOutput(probs, dict(output.labels), mask, output.uncertainty, {**output.info, **(info or {})})


@dataclass
class GateCaseStats:
    """One validation case, reduced to what the threshold search needs: for each distinct
    score (ascending), the overlap, predicted and (total) reference voxels per label, and the
    classifier's slices (score, reference positive) for sensitivity and specificity."""

    values: np.ndarray  # (U,) distinct scores, ascending
    inter: np.ndarray  # (U, L) |pred_l & ref_l| among voxels with that score
    pred: np.ndarray  # (U, L) |pred_l| among voxels with that score
    ref: np.ndarray  # (L,) |ref_l| in the whole case
    slice_scores: np.ndarray  # (n,) the classifier's scores
    slice_truth: np.ndarray  # (n,) bool, the reference has foreground in that slice (or image)


def case_stats(scores_vol: np.ndarray, mask: np.ndarray, reference: np.ndarray, values: Sequence[int],
               slice_scores: np.ndarray, slice_truth: np.ndarray) -> GateCaseStats:
    """Reduce a case (score volume, ungated mask and reference on one grid) to :class:`GateCaseStats`."""
    uniq, inverse = np.unique(scores_vol.reshape(-1), return_inverse=True)
    m, r = mask.reshape(-1), reference.reshape(-1)
    n = len(uniq)
    inter = np.zeros((n, len(values)))
    pred = np.zeros((n, len(values)))
    ref = np.zeros(len(values))
    for i, v in enumerate(values):
        pm, rm = m == v, r == v
        pred[:, i] = np.bincount(inverse, weights=pm, minlength=n)
        inter[:, i] = np.bincount(inverse, weights=pm & rm, minlength=n)
        ref[i] = rm.sum()
    return GateCaseStats(uniq, inter, pred, ref, np.asarray(slice_scores, float), np.asarray(slice_truth, bool))


def gated_dice(stats: GateCaseStats, thresholds: np.ndarray) -> np.ndarray:
    """Mean Dice over labels of the gated mask for every threshold (score >= t passes); both
    empty = 1. (T,)"""
    start = np.searchsorted(stats.values, thresholds, side="left")  # first distinct score >= t
    suffix_i = np.vstack([np.cumsum(stats.inter[::-1], 0)[::-1], np.zeros((1, stats.inter.shape[1]))])
    suffix_p = np.vstack([np.cumsum(stats.pred[::-1], 0)[::-1], np.zeros((1, stats.pred.shape[1]))])
    i, p = suffix_i[start], suffix_p[start]
    denom = p + stats.ref[None]
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(denom > 0, 2.0 * i / np.where(denom > 0, denom, 1.0), 1.0)
    return d.mean(1)


def roc_auc(scores: np.ndarray, truth: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties counted half); NaN without both classes."""
    from scipy.stats import rankdata

    truth = np.asarray(truth, bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def candidate_thresholds(stats: Sequence[GateCaseStats]) -> np.ndarray:
    """0 (the gate passes everything), the midpoints between consecutive distinct slice
    scores, and one just above the highest score (the gate stops everything)."""
    s = np.unique(np.concatenate([c.slice_scores for c in stats] + [np.zeros(0)]))
    mids = (s[:-1] + s[1:]) / 2 if len(s) > 1 else np.zeros(0)
    top = np.nextafter(s[-1], np.inf) if len(s) else 1.0
    return np.unique(np.concatenate([[0.0], mids, [top]]))


def choose_threshold(stats: Sequence[GateCaseStats], min_sensitivity: Optional[float] = None,
                     ) -> tuple[float, list[dict[str, float]], dict[str, float]]:
    """The threshold with the highest mean per-case Dice (subject to the sensitivity floor);
    returns (threshold, table rows, summary). See the module notes for the tie rule."""
    if not stats:
        raise ConfigError("gate: no validation cases to choose a threshold on.")
    cands = candidate_thresholds(stats)
    dice = np.stack([gated_dice(c, cands) for c in stats]).mean(0)  # (T,)
    scores = np.concatenate([c.slice_scores for c in stats])
    truth = np.concatenate([c.slice_truth for c in stats])
    passed = scores[None, :] >= cands[:, None]  # (T, n)
    n_pos, n_neg = max(int(truth.sum()), 1), max(int((~truth).sum()), 1)
    sens = (passed & truth).sum(1) / n_pos if truth.any() else np.ones(len(cands))
    spec = (~passed & ~truth).sum(1) / n_neg if (~truth).any() else np.ones(len(cands))
    ok = sens >= (min_sensitivity or 0.0) - 1e-12
    best = float(dice[ok].max())
    winners = np.flatnonzero(ok & (dice >= best - 1e-9))
    pick = int(winners[len(winners) // 2])
    rows_at = sorted(set(np.linspace(0, len(cands) - 1, min(TABLE_ROWS, len(cands))).round().astype(int).tolist())
                     | {0, pick})
    rows = [{"threshold": float(cands[k]), "dice": float(dice[k]), "sensitivity": float(sens[k]),
             "specificity": float(spec[k]), "chosen": int(k == pick)} for k in rows_at]
    summary = {"threshold": float(cands[pick]), "dice_gated": float(dice[pick]), "dice_ungated": float(dice[0]),
               "sensitivity": float(sens[pick]), "specificity": float(spec[pick]), "auc": roc_auc(scores, truth),
               "n_cases": len(stats), "n_slices": int(len(scores)), "n_positive_slices": int(truth.sum())}
    return float(cands[pick]), rows, summary


# --------------------------------------------------------------------------------- the stage
@register_stage("gate")
class GateStage(Stage):
    """A classifier gate on an earlier stage's output; see the module docstring."""

    Config = GateConfig

    def __init__(self, name: str, members: list[Member], input_stage: str, labels: dict[int, str],
                 threshold: float = 0.5, level: str = "auto", tables: Optional[dict[str, Any]] = None) -> None:
        super().__init__(name)
        self.members, self.input, self.threshold = members, input_stage, float(threshold)
        self._labels = {int(k): v for k, v in labels.items()}
        first = members[0]
        for m in members:
            if m.cfg.train.task != "classification":
                raise ConfigError(f"stage {name}: member {m.name} is not a classifier (train.task: "
                                  f"{m.cfg.train.task}); a gate needs train.task: classification.")
            if (m.cfg.preprocess != first.cfg.preprocess or m.meta.mode != first.meta.mode
                    or m.meta.axis != first.meta.axis):
                raise ConfigError(f"stage {name}: member {m.name} slices the image differently from {first.name} "
                                  "(preprocess, sampling.mode or sampling.axis differ); gate members must agree.")
        self.level = ("image" if first.meta.mode == "3d" else "slice") if level == "auto" else level
        if self.level == "slice" and first.meta.mode == "3d":
            raise ConfigError(f"stage {name}: level slice needs a 2D or 2.5D classifier; {first.name} is 3D.")
        self.tables = tables or {}
        self._models = FoldCache(self.members, lambda fold, device: fold.network().to(device).eval())

    @property
    def labels(self) -> dict[int, str]:
        return dict(self._labels)

    @property
    def channels(self) -> list[str]:
        return list(self.members[0].meta.channels)

    def _model(self, i: int, j: int, device: torch.device) -> torch.nn.Module:
        return self._models(i, j, device)

    def slice_scores(self, images: list[Image], options: RunOptions,
                     folds: Optional[list[list[int]]] = None) -> tuple[np.ndarray, GeometryRecord]:
        """P(positive) per slice of the classifiers' preprocessed grid (one value for a 3D
        classifier): the mean over members and their folds (``folds`` per member, default all,
        or those that did not train on ``options.exclude_case``)."""
        first = self.members[0]
        x, _, rec = preprocess(images, None, first.cfg.preprocess)
        total, n = None, 0
        for i, member in enumerate(self.members):
            if folds is not None:
                use = folds[i]
            elif options.exclude_case:
                use = member.usable_folds(options.exclude_case)
            else:
                use = list(range(len(member.folds)))
            meta = member.meta
            for j in use:
                probs = classify_volume(self._model(i, j, options.device), x, meta.mode, meta.axis, meta.context,
                                        meta.patch_size, meta.divisor, options.device)
                s = positive_scores(probs)
                total = s if total is None else total + s
                n += 1
        if total is None:
            raise ConfigError(f"stage {self.name}: no classifier fold to score this case with.")
        return total / n, rec

    def _axis(self) -> Optional[int]:
        return None if self.level == "image" else self.members[0].meta.axis

    def keep_map(self, scores: np.ndarray, record: GeometryRecord, threshold: Optional[float] = None) -> np.ndarray:
        t = self.threshold if threshold is None else threshold
        return score_volume(scores, record, self._axis()) >= t

    def predict(self, case: CaseData, options: RunOptions) -> StageOutput:
        out = case.output(self.input)
        scores, rec = self.slice_scores(case.images, options)
        keep = self.keep_map(scores, rec)
        passed = scores >= self.threshold if self.level == "slice" else np.array([scores.max() >= self.threshold])
        info = {"gate": {"stage": self.name, "level": self.level, "threshold": self.threshold,
                         "scores": [round(float(s), 6) for s in scores], "passed": int(passed.sum()),
                         "of": int(len(passed))}}
        return apply_gate(out, keep, info)

    # ---------------------------------------------------------------- storage
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors: dict[str, torch.Tensor] = {}
        members = []
        for i, m in enumerate(self.members):
            spec, t = m.to_state(f"g{i}")
            members.append(spec)
            tensors.update(t)
        spec = {"members": members, "input": self.input, "labels": {str(k): v for k, v in self._labels.items()},
                "threshold": self.threshold, "level": self.level, "tables": self.tables}
        return spec, tensors

    @classmethod
    def from_state(cls, name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: torch.device) -> "GateStage":
        members = [Member.from_state(ms, tensors) for ms in spec["members"]]
        return cls(name, members, spec["input"], {int(k): v for k, v in spec["labels"].items()},
                   spec["threshold"], spec["level"], spec.get("tables"))

    def describe(self) -> list[str]:
        lines = [f"{self.name}: gate on stage {self.input}, per {self.level}, threshold {self.threshold:.4g}; "
                 f"{len(self.members)} classifier(s): " + ", ".join(
                     f"{x.name} ({x.cfg.model.get('name')} {x.meta.mode}, {len(x.folds)} fold(s))" for x in self.members)]
        s = self.tables.get("summary")
        if s:
            lines.append(f"  search on {s['n_cases']} case(s), {s['n_slices']} {self.level}s: Dice {s['dice_ungated']:.4f} "
                         f"ungated -> {s['dice_gated']:.4f} gated; sensitivity {s['sensitivity']:.3f}, specificity "
                         f"{s['specificity']:.3f}, AUC {s['auc']:.3f}")
        return lines

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, name: str, config: GateConfig, ctx: BuildContext) -> "GateStage":
        built = list(getattr(ctx, "built", []) or [])
        if not built:
            raise ConfigError(f"stage {name}: a gate needs an earlier stage whose output it gates.")
        target = config.input or built[-1].name
        earlier = {s.name: s for s in built}
        if target not in earlier:
            raise ConfigError(f"stage {name}: input '{target}' is not an earlier stage.")
        specs = [MemberConfig(name=name, runs=config.runs)] if config.runs is not None else list(config.members or [])
        members = [Member.from_runs(s.name or f"classifier{i}", s.runs, ctx.base_dir, f"stage {name}")
                   for i, s in enumerate(specs)]
        labels = earlier[target].labels
        threshold = 0.5 if config.threshold == "search" else float(config.threshold)
        stage = cls(name, members, target, labels, threshold, config.level)
        if config.threshold == "search":
            stage._search(config, ctx)
        return stage

    def _search(self, config: GateConfig, ctx: BuildContext) -> None:
        values = list(self._labels)
        first = self.members[0]
        stats = []
        for vc in ctx.validation_cases(self.members, self._labels):
            out = vc.case.output(self.input)
            scores, rec = self.slice_scores(vc.case.images, RunOptions(device=ctx.device), vc.folds)
            ref_img = vc.case.images[0].with_array(np.asarray(vc.reference, dtype=np.uint8))
            _, ref_pp, _ = preprocess(vc.case.images, ref_img, first.cfg.preprocess)
            if self.level == "slice":  # the reference on the classifier's grid: the same slices as the scores
                truth = slice_classes(ref_pp, first.meta.mode, first.meta.axis, 2) > 0
            else:
                scores = np.array([scores.max()])
                truth = np.array([bool(np.any(ref_pp))])
            vol = score_volume(scores, rec, self._axis())
            stats.append(case_stats(vol, out.mask, vc.reference, values, scores, truth))
        t, rows, summary = choose_threshold(stats, config.min_sensitivity)
        self.threshold = t
        self.tables = {"threshold": rows, "summary": summary}
        ctx.record(self.name, "threshold", rows)
        ctx.record(self.name, "summary", summary)
        log.info("stage %s: threshold %.4g (Dice %.4f ungated -> %.4f gated, sensitivity %.3f, specificity %.3f, "
                 "AUC %.3f, %d cases)", self.name, t, summary["dice_ungated"], summary["dice_gated"],
                 summary["sensitivity"], summary["specificity"], summary["auc"], summary["n_cases"])

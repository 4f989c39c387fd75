"""Stage ``segment``: one or more trained models whose probabilities are combined.

Each member is a trained model (one run, or several fold runs of one experiment whose
probabilities are averaged). Members are combined on the input grid, so they may use different
preprocessing. Combination rules (``combine``):

- ``mean``: the average of the members' probabilities.
- ``weighted_mean``: the average weighted by each member's ``weight`` (normalised to sum 1);
  with ``weights: search`` the weights are chosen at build time instead (below).
- ``vote``: each member votes for its arg-max label; a voxel takes the label with the most
  votes. **Tie rule**: among the labels tied on votes, the one with the highest mean probability
  over all members wins; if those are exactly equal too, the smallest label value wins
  (background first). The output probabilities are the vote fractions.
- ``fusion``: a learned 1x1 convolution over the concatenated member probabilities
  (M x (1 + L) -> 1 + L channels, softmax), trained at build time only on out-of-fold
  predictions (each case predicted by the folds that did not train on it), by cross-entropy.

Test-time augmentation (``tta``) flips along volume axes and, in 2D, rotates by 90 degrees;
each member uses only what it was trained on (``delineo.infer.pipeline.tta``). ``flip:
search`` / ``rot90: search`` try every subset on the out-of-fold cases and keep the one with
the highest mean per-case Dice; a larger set must beat a smaller one by more than 1e-4.

**Weight search** (``combine: weighted_mean`` with ``weights: search``, ``search_weights``)
runs on the same out-of-fold cases and the same cached member probabilities as the TTA search
(no second network pass), after the TTA is chosen (the TTA candidates are scored with equal
weights). Every member gets a multiplier from ``{0, 0.5, 1, 2}``; the weights are the
multipliers divided by their sum. Coordinate search: start from all 1 (equal weights, the
mean); in each sweep, for each member in turn, try its other multipliers with the others fixed
and move to the best one if it raises the mean per-case Dice (each case's Dice averaged over
labels, then over cases) by more than 1e-4; stop after a sweep without a move (at most 10
sweeps). Ties therefore keep equal weights, and the chosen weights never score below the mean
on the search cases. The cases must be out of fold for every member (a case is used only where
each member has a fold that did not train on it); members without such a case in common are an
error naming the pipeline file. The chosen weights and the table of every weighting tried
(weights -> mean Dice) are stored in the pipeline and shown by ``delineo info``. The search
cases are held in memory with each TTA candidate's member probabilities (bound their number
with ``build.max_cases``).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any, Literal, Optional, Sequence, Union

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm import tqdm

from delineo.config import Strict
from delineo.errors import ConfigError
from delineo.infer.pipeline.members import Member, fold_predictors
from delineo.infer.pipeline.stages import (BuildContext, CaseData, RunOptions, Stage, StageOutput,
                                           mask_from_probs, register_stage, two_channel)
from delineo.infer.pipeline.tta import UNCERTAINTY, Augmentation, Welford, augmentations, entropy, trained_flip_axes, \
    trained_rot_plane
from delineo.infer.predictor import Predictor
from delineo.preprocess.pipeline import GeometryRecord, preprocess, restore

log = logging.getLogger(__name__)

COMBINE = ("mean", "weighted_mean", "vote", "fusion")
#: per-member multipliers tried by the weight search (weights = multipliers / their sum)
MULTIPLIERS = (0.0, 0.5, 1.0, 2.0)
#: a search candidate must beat the current choice by more than this mean Dice
TOLERANCE = 1e-4


class MemberConfig(Strict):
    name: Optional[str] = None
    runs: list[str] = Field(min_length=1, description="run folders, checkpoints or globs (runs/x/fold_*)")
    weight: float = Field(1.0, gt=0)


class TTAConfig(Strict):
    flip: Union[Literal["search"], list[int]] = Field(default_factory=list, description="volume axes, or search")
    rot90: Union[Literal["search"], bool] = False

    @model_validator(mode="after")
    def _axes(self) -> "TTAConfig":
        if isinstance(self.flip, list) and any(a not in (0, 1, 2) for a in self.flip):
            raise ValueError(f"tta.flip axes must be 0, 1 or 2, got {self.flip}")
        return self


class SegmentConfig(Strict):
    name: str
    kind: Literal["segment"] = "segment"
    runs: Optional[list[str]] = Field(None, description="one member made of these runs")
    members: Optional[list[MemberConfig]] = None
    combine: Literal["mean", "weighted_mean", "vote", "fusion"] = "mean"
    weights: Literal["given", "search"] = Field(
        "given", description="weighted_mean: each member's weight as given, or searched on out-of-fold cases")
    tta: TTAConfig = TTAConfig()
    fusion_steps: int = Field(300, ge=1, description="optimiser steps of the learned fusion")

    @model_validator(mode="after")
    def _members(self) -> "SegmentConfig":
        if (self.runs is None) == (self.members is None):
            raise ValueError("give either runs (one member) or members (several), not both or neither")
        n = len(self.members or [1])
        if self.combine in ("vote", "fusion") and n < 2:
            raise ValueError(f"combine: {self.combine} needs at least 2 members")
        if self.weights == "search":
            if self.combine != "weighted_mean":
                raise ValueError(f"weights: search needs combine: weighted_mean, not {self.combine}")
            if n < 2:
                raise ValueError("weights: search needs at least 2 members")
            given = [m.name or f"member{i}" for i, m in enumerate(self.members or []) if "weight" in m.model_fields_set]
            if given:
                raise ValueError(f"weights: search chooses every member's weight, so remove weight from "
                                 f"{', '.join(given)}")
        return self


class PreparedCase:
    """Preprocessed input of one case, shared by members with the same preprocessing."""

    def __init__(self, images) -> None:
        self.images = images
        self._by_key: dict[str, tuple[np.ndarray, GeometryRecord]] = {}

    def get(self, member: Member) -> tuple[np.ndarray, GeometryRecord]:
        cfg = member.cfg.preprocess
        key = cfg.model_dump_json()
        if key not in self._by_key:
            x, _, rec = preprocess(self.images, None, cfg)
            self._by_key[key] = (x, rec)
        return self._by_key[key]


@register_stage("segment")
class SegmentStage(Stage):
    """Members combined by ``combine``, with chosen TTA; see the module docstring."""

    Config = SegmentConfig

    def __init__(self, name: str, members: list[Member], combine: str = "mean", weights: Optional[list[float]] = None,
                 tta: Optional[dict[str, Any]] = None, fusion: Optional[dict[str, torch.Tensor]] = None,
                 tables: Optional[dict[str, Any]] = None) -> None:
        super().__init__(name)
        if combine not in COMBINE:
            raise ConfigError(f"stage {name}: unknown combine '{combine}' (one of {', '.join(COMBINE)}).")
        self.members, self.combine = members, combine
        self.weights = list(weights) if weights else [1.0] * len(members)
        self.tta = {"flip": [], "rot90": False, **(tta or {})}
        self.fusion = fusion  # {"weight": (K, M*K, 1), "bias": (K,)}
        self.tables = tables or {}
        first = members[0].meta
        for m in members[1:]:
            if sorted(m.meta.labels) != sorted(first.labels):
                raise ConfigError(f"stage {name}: member {m.name} predicts labels {m.meta.labels}, "
                                  f"member {members[0].name} predicts {first.labels}; they cannot be combined.")
        self._labels = {int(k): v for k, v in sorted(first.labels.items())}
        self._predictors = fold_predictors(self.members)

    # ------------------------------------------------------------------ facts
    @property
    def labels(self) -> dict[int, str]:
        return dict(self._labels)

    @property
    def channels(self) -> list[str]:
        return list(self.members[0].meta.channels)

    def predictor(self, i: int, j: int, device: torch.device) -> Predictor:
        return self._predictors(i, j, device)

    def augs(self, i: int) -> list[Augmentation]:
        m = self.members[i]
        return augmentations(m.cfg, m.meta, self.tta["flip"], bool(self.tta["rot90"]))

    # ------------------------------------------------------------- prediction
    def member_probs(self, i: int, prepared: PreparedCase, options: RunOptions, folds: Optional[list[int]] = None,
                     augs: Optional[list[Augmentation]] = None, spread: Optional[Welford] = None) -> np.ndarray:
        """Member ``i``'s probabilities (1 + L, *S) on the input grid: the mean over its folds
        (``folds``, default all) and augmentations; each sample goes into ``spread`` if given."""
        member = self.members[i]
        x, rec = prepared.get(member)
        folds = list(range(len(member.folds))) if folds is None else folds
        augs = self.augs(i) if augs is None else augs
        total = None
        for j in folds:
            pred = self.predictor(i, j, options.device)
            for aug in augs:
                p = aug.inverse(pred.predict_array(aug.forward(x)))
                if spread is not None:
                    spread.add(two_channel(restore(p, rec, probabilities=True)))
                total = p if total is None else total + p
        probs = restore(total / (len(folds) * len(augs)), rec, probabilities=True)
        return two_channel(probs)

    def combine_probs(self, member_probs: list[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
        """(probabilities, label map or None) from the members' probabilities."""
        values = list(self._labels)
        if self.combine == "mean":
            return np.mean(member_probs, axis=0).astype(np.float32), None
        if self.combine == "weighted_mean":
            return weighted_mean(np.stack(member_probs), self.weights), None
        if self.combine == "vote":
            return vote(member_probs, values)
        return fuse(member_probs, self.fusion), None

    def predict(self, case: CaseData, options: RunOptions) -> StageOutput:
        prepared = PreparedCase(case.images)
        spread = Welford() if options.uncertainty == "variance" else None
        member_probs = []
        for i, member in enumerate(self.members):
            folds = member.usable_folds(options.exclude_case) if options.exclude_case else None
            member_probs.append(self.member_probs(i, prepared, options, folds, spread=spread))
        probs, mask = self.combine_probs(member_probs)
        if mask is None:
            mask = mask_from_probs(probs, list(self._labels), self.default_thresholds())
        unc = None
        if options.uncertainty == "variance":
            unc = spread.variance()
        elif options.uncertainty == "entropy":
            unc = entropy(probs)
        elif options.uncertainty is not None:
            raise ConfigError(f"uncertainty '{options.uncertainty}': choose one of {', '.join(UNCERTAINTY)}.")
        return StageOutput(probs, self.labels, mask, unc)

    def default_thresholds(self) -> Optional[dict[int, float]]:
        """One-output (sigmoid) members say foreground at p >= 0.5, as ``Predictor`` does."""
        if all(m.meta.out_channels == 1 for m in self.members) and len(self._labels) == 1:
            return {next(iter(self._labels)): 0.5}
        return None

    # ---------------------------------------------------------------- storage
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors: dict[str, torch.Tensor] = {}
        members = []
        for i, m in enumerate(self.members):
            spec, t = m.to_state(f"m{i}")
            members.append(spec)
            tensors.update(t)
        if self.fusion is not None:
            tensors.update({f"fusion.{k}": v.detach().cpu().contiguous() for k, v in self.fusion.items()})
        spec = {"members": members, "combine": self.combine, "weights": self.weights, "tta": self.tta,
                "tables": self.tables}
        return spec, tensors

    @classmethod
    def from_state(cls, name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: torch.device) -> "SegmentStage":
        members = [Member.from_state(ms, tensors) for ms in spec["members"]]
        fusion = {k[len("fusion."):]: v for k, v in tensors.items() if k.startswith("fusion.")} or None
        return cls(name, members, spec.get("combine", "mean"), spec.get("weights"), spec.get("tta"), fusion,
                   spec.get("tables"))

    def describe(self) -> list[str]:
        lines = [f"{self.name}: segment, {len(self.members)} member(s) combined by {self.combine}; TTA flips "
                 f"{self.tta['flip'] or 'none'}, rot90 {'yes' if self.tta['rot90'] else 'no'}"]
        for i, m in enumerate(self.members):
            meta = m.meta
            lines.append(f"  member {m.name}: {m.cfg.model.get('name')} {meta.mode}, {len(m.folds)} fold(s), "
                         f"weight {self.weights[i]:g}, channels {', '.join(meta.channels)}, labels {meta.labels}")
        if self.fusion is not None:
            w = self.fusion["weight"].reshape(self.fusion["weight"].shape[0], -1)
            k = w.shape[0]
            share = [float(w[:, i * k:(i + 1) * k].diagonal().sum()) for i in range(len(self.members))]
            lines.append("  fusion diagonal weight per member: " + ", ".join(f"{s:.2f}" for s in share))
        for key, table in self.tables.items():
            lines.append(f"  search {key}: " + "; ".join(f"{r['candidate']} {r['dice']:.4f}" for r in table))
        return lines

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, name: str, config: SegmentConfig, ctx: BuildContext) -> "SegmentStage":
        if config.runs is not None:
            specs = [MemberConfig(name=name, runs=config.runs)]
        else:
            specs = config.members or []
        members = [Member.from_runs(s.name or f"member{i}", s.runs, ctx.base_dir, f"stage {name}")
                   for i, s in enumerate(specs)]
        weights = [s.weight for s in specs]
        tta: dict[str, Any] = {"flip": [] if config.tta.flip == "search" else list(config.tta.flip),
                               "rot90": False if config.tta.rot90 == "search" else bool(config.tta.rot90)}
        stage = cls(name, members, config.combine, weights, tta)
        if (config.tta.flip == "search" or config.tta.rot90 == "search" or config.combine == "fusion"
                or config.weights == "search"):
            stage._search(config, ctx)
        return stage

    def _search(self, config: SegmentConfig, ctx: BuildContext) -> None:
        """Choose TTA on out-of-fold cases (per-case Dice of the combined members), then train the
        fusion or search the weights on the chosen TTA's cached member probabilities."""
        flip_union = sorted({a for m in self.members for a in trained_flip_axes(m.cfg, m.meta)})
        rot_any = any(trained_rot_plane(m.cfg, m.meta) is not None for m in self.members)
        flip_cands = ([list(c) for r in range(len(flip_union) + 1) for c in itertools.combinations(flip_union, r)]
                      if config.tta.flip == "search" else [self.tta["flip"]])
        rot_cands = ([False, True] if rot_any else [False]) if config.tta.rot90 == "search" else [self.tta["rot90"]]
        cands = [(f, r) for r in rot_cands for f in flip_cands]
        cases = list(ctx.validation_cases(self.members, self.labels))
        source = getattr(ctx, "source", "pipeline")
        if not cases and config.weights == "search":
            raise ConfigError(f"{source}: stage {self.name}: members {', '.join(m.name for m in self.members)} have "
                              "no out-of-fold case in common (each case trained at least one of them, or is in no "
                              "fold's validation list), so their weights cannot be searched; train them on the "
                              "same folds or give each member a weight.")
        if not cases:
            raise ConfigError(f"{source}: stage {self.name}: no out-of-fold validation cases to search on (every "
                              "case was used to train some member, or the runs have no cases.json).")
        keep = self.combine == "fusion" or config.weights == "search"
        opts = RunOptions(device=ctx.device)
        values = list(self._labels)
        scores = {i: [] for i in range(len(cands))}
        oof: list[list[np.ndarray]] = []
        full_flip = flip_union if config.tta.flip == "search" else self.tta["flip"]
        full_rot = rot_any if config.tta.rot90 == "search" else bool(self.tta["rot90"])
        from delineo.evaluate.metrics import score_case

        thresholds = self.default_thresholds()
        for vc in tqdm(cases, desc=f"{self.name}: out-of-fold predictions", unit="case", leave=False,
                       disable=not getattr(ctx, "progress", True)):
            prepared = PreparedCase(vc.case.images)
            # per member and augmentation: out-of-fold probabilities on the preprocessed grid
            per_aug: list[dict[Augmentation, np.ndarray]] = []
            for i, m in enumerate(self.members):
                x, rec = prepared.get(m)
                got: dict[Augmentation, np.ndarray] = {}
                for aug in augmentations(m.cfg, m.meta, full_flip, full_rot):
                    acc = None
                    for j in vc.folds[i]:
                        p = aug.inverse(self.predictor(i, j, opts.device).predict_array(aug.forward(x)))
                        acc = p if acc is None else acc + p
                    got[aug] = acc / len(vc.folds[i])
                per_aug.append(got)
            case_oof = None
            restored: dict[tuple[int, tuple[Augmentation, ...]], np.ndarray] = {}  # shared across candidates
            for ci, (flip, rot) in enumerate(cands):
                mp = []
                for i, m in enumerate(self.members):
                    _, rec = prepared.get(m)
                    wanted = tuple(augmentations(m.cfg, m.meta, flip, rot))
                    if (i, wanted) not in restored:
                        restored[(i, wanted)] = two_channel(restore(np.mean([per_aug[i][a] for a in wanted], axis=0),
                                                                    rec, probabilities=True))
                    mp.append(restored[(i, wanted)])
                probs = np.mean(mp, axis=0) if self.combine != "weighted_mean" else self.combine_probs(mp)[0]
                seg = mask_from_probs(probs, values, thresholds)
                scores[ci].append(mean_dice(seg, vc.reference, values))
                if keep:  # kept for the fusion or the weight search once TTA is chosen
                    case_oof = case_oof if case_oof is not None else {}
                    case_oof[ci] = mp
            if case_oof is not None:
                oof.append(case_oof)  # type: ignore[arg-type]
        table = []
        best = 0
        for ci, (flip, rot) in enumerate(cands):
            mean = float(np.mean(scores[ci]))
            table.append({"candidate": f"flip {flip or 'none'}{' + rot90' if rot else ''}", "dice": mean,
                          "n_cases": len(scores[ci])})
            if mean > table[best]["dice"] + 1e-4:
                best = ci
        self.tta = {"flip": list(cands[best][0]), "rot90": bool(cands[best][1])}
        if len(cands) > 1:
            self.tables["tta"] = table
            ctx.record(self.name, "tta", table)
            log.info("stage %s: TTA %s chosen (%s)", self.name, table[best]["candidate"],
                     ", ".join(f"{r['candidate']} {r['dice']:.4f}" for r in table))
        if config.weights == "search":
            member_probs = [case_oof[best] for case_oof in oof]
            self.weights, rows = search_weights(member_probs, [vc.reference for vc in cases], values, thresholds)
            self.tables["weights"] = rows
            ctx.record(self.name, "weights", rows)
            chosen = next(r for r in rows if r["chosen"])
            log.info("stage %s: member weights %s chosen on %d case(s), mean Dice %.4f (equal weights %.4f)",
                     self.name, chosen["candidate"], len(cases), chosen["dice"], rows[0]["dice"])
        if self.combine == "fusion":
            member_probs = [case_oof[best] for case_oof in oof]
            self.fusion = train_fusion(member_probs, [vc.reference for vc in cases], values, config.fusion_steps)
            fused = []
            for mp, vc in zip(member_probs, cases):
                seg = mask_from_probs(fuse(mp, self.fusion), values)
                s = score_case(seg, vc.reference, vc.spacing, self.labels)
                fused.append(float(np.mean([s[n]["dice"] for n in self.labels.values()])))
            rows = [{"candidate": "fusion (on its own training cases)", "dice": float(np.mean(fused)),
                     "n_cases": len(fused)}]
            for i, m in enumerate(self.members):
                per = []
                for mp, vc in zip(member_probs, cases):
                    s = score_case(mask_from_probs(mp[i], values), vc.reference, vc.spacing, self.labels)
                    per.append(float(np.mean([s[n]["dice"] for n in self.labels.values()])))
                rows.append({"candidate": f"member {m.name}", "dice": float(np.mean(per)), "n_cases": len(per)})
            self.tables["fusion"] = rows
            ctx.record(self.name, "fusion", rows)


def weighted_mean(stack: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """(M, K, *S) member probabilities -> (K, *S) float32, weighted by ``weights`` normalised to
    sum 1; prediction and the weight search both use it, so the search scores what is predicted."""
    w = np.asarray(weights, dtype=np.float64)
    return np.tensordot(w / w.sum(), stack, axes=1).astype(np.float32)


def mean_dice(seg: np.ndarray, reference: np.ndarray, values: Sequence[int]) -> float:
    """Mean over ``values`` of the Dice of ``seg == v`` against ``reference == v``, with both
    empty = 1 and one empty = 0: the Dice of :func:`delineo.evaluate.metrics.score_case`,
    without the surface distances a search does not need."""
    out = []
    for v in values:
        a, b = seg == v, reference == v
        sa, sb = int(np.count_nonzero(a)), int(np.count_nonzero(b))
        out.append(1.0 if sa + sb == 0 else 2.0 * int(np.count_nonzero(a & b)) / (sa + sb))
    return float(np.mean(out))


def search_weights(member_probs: list[list[np.ndarray]], references: list[np.ndarray], values: list[int],
                   thresholds: Optional[dict[int, float]] = None, max_sweeps: int = 10,
                   ) -> tuple[list[float], list[dict[str, Any]]]:
    """Choose ``weighted_mean`` weights on out-of-fold cases: (weights summing to 1, table).

    ``member_probs`` is cases x members x (1 + L, *S) probabilities (each case's out-of-fold
    prediction by every member), ``references`` the label maps. The rule is the module
    docstring's: a coordinate search over per-member multipliers :data:`MULTIPLIERS`
    (normalised to sum 1), starting from equal weights, moving only on a gain of more than
    :data:`TOLERANCE` in mean per-case Dice, so ties keep equal weights and the result never
    scores below the mean on these cases. The table has one row per distinct weighting tried,
    in the order tried (the first is equal weights), with ``chosen`` marking the result.
    """
    m = len(member_probs[0])
    if m < 2 or any(len(mp) != m for mp in member_probs):
        raise ConfigError("the weight search needs the same 2 or more members' probabilities for every case.")
    stacks = [np.stack(mp).astype(np.float32, copy=False) for mp in member_probs]
    tried: dict[tuple[float, ...], dict[str, Any]] = {}

    def normalise(mult: tuple[float, ...]) -> tuple[float, ...]:
        total = sum(mult)
        return tuple(round(x / total, 9) for x in mult)

    def score(mult: tuple[float, ...]) -> float:
        w = normalise(mult)
        if w not in tried:
            dices = []
            for stack, ref in zip(stacks, references):
                probs = weighted_mean(stack, w)
                dices.append(mean_dice(mask_from_probs(probs, values, thresholds), ref, values))
            tried[w] = {"candidate": "weights " + "/".join(f"{x:.2f}" for x in w), "weights": list(w),
                        "dice": float(np.mean(dices)), "n_cases": len(dices), "chosen": False}
        return tried[w]["dice"]

    current = (1.0,) * m
    best = score(current)
    for _ in range(max_sweeps):
        moved = False
        for i in range(m):
            pick, pick_score = current, best
            for g in MULTIPLIERS:
                cand = current[:i] + (g,) + current[i + 1:]
                if cand == current or sum(cand) == 0:
                    continue
                d = score(cand)
                if d > pick_score + TOLERANCE:
                    pick, pick_score = cand, d
            if pick != current:
                current, best, moved = pick, pick_score, True
        if not moved:
            break
    chosen = normalise(current)
    tried[chosen]["chosen"] = True
    return list(chosen), list(tried.values())


def vote(member_probs: list[np.ndarray], values: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Majority vote with the tie rule of the module docstring: (vote fractions, label map)."""
    stack = np.stack(member_probs)  # (M, K, *S)
    m, k = stack.shape[:2]
    votes = np.zeros(stack.shape[1:], dtype=np.int32)
    choice = stack.argmax(1)  # (M, *S)
    for c in range(k):
        votes[c] = (choice == c).sum(0)
    mean = stack.mean(0)
    top = votes.max(0)
    # rank tied-on-votes channels by mean probability; exact ties go to the lower channel because
    # argmax returns the first maximum and channels are in increasing label order (background first)
    key = np.where(votes == top[None], mean, -1.0)
    winner = key.argmax(0)
    lut = np.array([0, *values], dtype=np.uint8)
    return (votes / m).astype(np.float32), lut[winner]


def fuse(member_probs: list[np.ndarray], fusion: Optional[dict[str, torch.Tensor]]) -> np.ndarray:
    """Apply the learned 1x1 convolution: (M x (K, *S)) -> softmax (K, *S)."""
    if fusion is None:
        raise ConfigError("combine: fusion has no trained weights in this pipeline.")
    x = torch.from_numpy(np.concatenate(member_probs).astype(np.float32))  # (M*K, *S)
    w = fusion["weight"].float().reshape(fusion["weight"].shape[0], -1)
    logits = torch.einsum("ok,k...->o...", w, x) + fusion["bias"].float().reshape(-1, *([1] * (x.dim() - 1)))
    return torch.softmax(logits, 0).numpy()


def train_fusion(member_probs: list[list[np.ndarray]], references: list[np.ndarray], values: list[int],
                 steps: int = 300, seed: int = 0) -> dict[str, torch.Tensor]:
    """Fit the fusion on out-of-fold probabilities (cases x members x (K, *S)) by cross-entropy.

    Starts from the mean of the members (identity blocks); full-batch Adam over every voxel of
    every case (a fixed random subset of 2 million voxels when there are more)."""
    g = torch.Generator().manual_seed(seed)
    k = member_probs[0][0].shape[0]
    m = len(member_probs[0])
    lut = np.zeros(256, dtype=np.int64)
    for i, v in enumerate(values):
        lut[v] = i + 1
    xs = torch.cat([torch.from_numpy(np.concatenate(mp).reshape(m * k, -1).astype(np.float32)) for mp in member_probs],
                   dim=1)  # (M*K, N)
    ys = torch.cat([torch.from_numpy(lut[np.asarray(r, dtype=np.int64)].reshape(-1)) for r in references])
    if xs.shape[1] > 2_000_000:  # bound the cost: a fixed random subset of voxels
        idx = torch.randperm(xs.shape[1], generator=g)[:2_000_000]
        xs, ys = xs[:, idx], ys[idx]
    w = torch.zeros(k, m * k)
    for i in range(m):
        w[:, i * k:(i + 1) * k] = torch.eye(k) * (4.0 / m)
    w.requires_grad_(True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        logits = (w @ xs + b[:, None]).T
        loss = torch.nn.functional.cross_entropy(logits, ys)
        loss.backward()
        opt.step()
    log.info("fusion trained on %d voxels, final loss %.4f", xs.shape[1], float(loss.detach()))
    return {"weight": w.detach().reshape(k, m * k, 1), "bias": b.detach()}

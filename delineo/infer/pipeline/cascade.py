"""Stage ``cascade``: segment inside the organ an earlier stage found (a region cascade).

Stage 1 (any earlier stage, ``organ``; default the previous one) segments an organ; this stage
runs models trained with ``preprocess.region`` (delineo.preprocess.region) on the image
restricted to that organ, exactly as they were trained on the reference organ: each member
preprocesses the case with its own experiment, the predicted organ is carried onto that grid
(nearest neighbour), the image is cropped to the organ's box with the member's margin, square
and size, the background outside the organ is set as in training, and the member's
probabilities are mapped back to the whole preprocessed grid (:func:`unrestrict`) and then to
the input grid (:func:`restore`). Finally the output is kept inside the organ on the input grid:
every voxel outside it is background, whatever the member said.

A member trained on whole images (no ``preprocess.region``) is run on the whole image and its
output is kept inside the organ too. Stages chain: a cascade stage can be the organ of the next.

``keep_organ: true`` returns the organ's labels as well (liver + lesion: a lesion voxel takes
the lesion label, the rest of the liver keeps the liver label); the probabilities are composed
so that they still sum to 1: P(lesion) from this stage, P(liver) = P1(liver) x (1 - P(lesion)),
P(background) = P1(background) x (1 - P(lesion)). Without it, only this stage's labels come out
(hippocampus, then anterior / posterior inside it).
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional

import numpy as np
import torch
from pydantic import Field, model_validator

from delineo.config import Strict
from delineo.errors import ConfigError
from delineo.infer.pipeline.members import Member, fold_predictors
from delineo.infer.pipeline.segment import MemberConfig, TTAConfig
from delineo.infer.pipeline.stages import (BuildContext, CaseData, RunOptions, Stage, StageOutput, mask_from_probs,
                                           register_stage, two_channel)
from delineo.infer.pipeline.tta import augmentations
from delineo.infer.predictor import Predictor
from delineo.io.image import Image
from delineo.preprocess.pipeline import preprocess, restore
from delineo.preprocess.region import region_axes, restrict, unrestrict

log = logging.getLogger(__name__)


class CascadeConfig(Strict):
    name: str
    kind: Literal["cascade"] = "cascade"
    organ: Optional[str] = Field(None, description="the earlier stage whose mask is the organ (default: the previous)")
    organ_labels: Optional[list[int]] = Field(None, description="label values of that mask that make the organ "
                                              "(default: all of them)")
    runs: Optional[list[str]] = Field(None, description="one member made of these runs (trained with preprocess.region)")
    members: Optional[list[MemberConfig]] = None
    combine: Literal["mean", "weighted_mean"] = "mean"
    tta: TTAConfig = TTAConfig()
    keep_organ: bool = Field(False, description="also output the organ's labels (organ + lesion)")

    @model_validator(mode="after")
    def _check(self) -> "CascadeConfig":
        if (self.runs is None) == (self.members is None):
            raise ValueError("give either runs (one member) or members (several), not both or neither")
        if self.tta.flip == "search" or self.tta.rot90 == "search":
            raise ValueError("a cascade stage takes fixed TTA (flip: [axes], rot90: true/false), not search")
        return self


def compose_with_organ(organ_out: StageOutput, organ_values: list[int], probs2: np.ndarray, mask2: np.ndarray,
                       labels2: dict[int, str]) -> tuple[np.ndarray, np.ndarray, dict[int, str]]:
    """Organ labels + this stage's labels (see the module notes): (probs, mask, labels)."""
    labels = {v: organ_out.labels[v] for v in organ_values}
    labels.update(labels2)
    values = list(labels)
    fg2 = probs2[1:].sum(0)
    probs = np.zeros((1 + len(values),) + probs2.shape[1:], dtype=np.float32)
    probs[0] = organ_out.probs[0] * (1.0 - fg2)
    ch1 = {v: i + 1 for i, v in enumerate(organ_out.values)}
    for i, v in enumerate(values):
        if v in labels2:
            probs[1 + i] = probs2[1 + list(labels2).index(v)]
        else:
            probs[1 + i] = organ_out.probs[ch1[v]] * (1.0 - fg2)
    organ_mask = np.where(np.isin(organ_out.mask, organ_values), organ_out.mask, 0)
    probs[0] += (1.0 - probs.sum(0)).clip(min=0)  # the organ labels left out (organ_labels) count as background
    mask = np.where(mask2 > 0, mask2, organ_mask).astype(np.uint8)
    return probs, mask, labels


@register_stage("cascade")
class CascadeStage(Stage):
    """Region-restricted members inside an earlier stage's organ; see the module docstring."""

    Config = CascadeConfig

    def __init__(self, name: str, members: list[Member], organ: str, organ_labels: Optional[list[int]] = None,
                 organ_names: Optional[dict[int, str]] = None, combine: str = "mean",
                 weights: Optional[list[float]] = None, tta: Optional[dict[str, Any]] = None,
                 keep_organ: bool = False) -> None:
        super().__init__(name)
        self.members, self.organ, self.combine = members, organ, combine
        self.organ_labels = [int(v) for v in organ_labels] if organ_labels else None
        self.organ_names = {int(k): v for k, v in (organ_names or {}).items()}
        self.weights = list(weights) if weights else [1.0] * len(members)
        self.tta = {"flip": [], "rot90": False, **(tta or {})}
        self.keep_organ = keep_organ
        first = members[0].meta
        for m in members[1:]:
            if sorted(m.meta.labels) != sorted(first.labels):
                raise ConfigError(f"stage {name}: member {m.name} predicts labels {m.meta.labels}, "
                                  f"member {members[0].name} predicts {first.labels}; they cannot be combined.")
        for m in members:
            if m.cfg.train.task == "classification":
                raise ConfigError(f"stage {name}: member {m.name} is a classifier; a cascade stage segments.")
        self._own = {int(k): v for k, v in sorted(first.labels.items())}
        if keep_organ:
            kept = self.organ_labels or list(self.organ_names)
            clash = sorted(set(kept) & set(self._own))
            if clash:
                raise ConfigError(f"stage {name}: keep_organ puts organ labels {kept} and this stage's labels "
                                  f"{sorted(self._own)} in one mask, but {clash} are in both; train this stage on "
                                  "other label values (data.labels).")
        self._predictors = fold_predictors(self.members)

    # ------------------------------------------------------------------ facts
    @property
    def labels(self) -> dict[int, str]:
        if not self.keep_organ:
            return dict(self._own)
        kept = self.organ_labels or list(self.organ_names)
        return {**{v: self.organ_names.get(v, str(v)) for v in kept}, **self._own}

    @property
    def channels(self) -> list[str]:
        return list(self.members[0].meta.channels)

    def predictor(self, i: int, j: int, device: torch.device) -> Predictor:
        return self._predictors(i, j, device)

    # ------------------------------------------------------------- prediction
    def member_probs(self, i: int, images: list[Image], organ: np.ndarray, options: RunOptions) -> np.ndarray:
        """Member ``i``'s probabilities (1 + L, *S) on the input grid, from the image restricted
        to ``organ`` (a mask on the input grid) as in its training."""
        member = self.members[i]
        cfg, meta = member.cfg, member.meta
        region = cfg.preprocess.region
        plain = cfg.preprocess.model_copy(update={"region": None})
        organ_img = images[0].with_array(organ.astype(np.uint8))
        x, organ_pp, rec = preprocess(images, organ_img, plain)
        k = meta.out_channels
        if region is not None:
            if not np.any(organ_pp):  # the organ vanished on this member's grid (resampling): nothing inside
                empty = np.zeros((k,) + tuple(x.shape[1:]), np.float32)
                if k > 1:
                    empty[0] = 1.0
                return two_channel(restore(empty, rec, probabilities=True))
            x, rrec = restrict(x, organ_pp > 0, rec.spacing, region.margin_mm, region_axes(meta.mode, meta.axis),
                               region.square, region.size, region.background, region.clahe, self.name)
        else:
            rrec = None
        folds = member.usable_folds(options.exclude_case) if options.exclude_case else list(range(len(member.folds)))
        augs = augmentations(cfg, meta, self.tta["flip"], bool(self.tta["rot90"]))
        total = None
        for j in folds:
            pred = self.predictor(i, j, options.device)
            for aug in augs:
                p = aug.inverse(pred.predict_array(aug.forward(x)))
                total = p if total is None else total + p
        probs = total / (len(folds) * len(augs))
        if rrec is not None:
            probs = unrestrict(probs, rrec)
        return two_channel(restore(probs, rec, probabilities=True))

    def organ_mask(self, organ_out: StageOutput) -> np.ndarray:
        return np.isin(organ_out.mask, self.organ_labels) if self.organ_labels else organ_out.mask > 0

    def predict(self, case: CaseData, options: RunOptions) -> StageOutput:
        organ_out = case.output(self.organ)
        organ = self.organ_mask(organ_out)
        values = list(self._own)
        shape = organ.shape
        if organ.any():
            member_probs = [self.member_probs(i, case.images, organ, options) for i in range(len(self.members))]
            w = np.asarray(self.weights if self.combine == "weighted_mean" else [1.0] * len(self.members), float)
            probs = np.tensordot(w / w.sum(), np.stack(member_probs), axes=1).astype(np.float32)
            probs[1:, ~organ] = 0.0  # kept inside the organ, exactly, on the input grid
            probs[0, ~organ] = 1.0
            single = all(m.meta.out_channels == 1 for m in self.members) and len(values) == 1
            mask = mask_from_probs(probs, values, {values[0]: 0.5} if single else None)
            mask[~organ] = 0
        else:
            probs = np.zeros((1 + len(values),) + shape, np.float32)
            probs[0] = 1.0
            mask = np.zeros(shape, np.uint8)
        info = {"cascade": {"stage": self.name, "organ": self.organ, "organ_voxels": int(organ.sum())}}
        if self.keep_organ:
            kept = self.organ_labels or organ_out.values
            probs, mask, labels = compose_with_organ(organ_out, kept, probs, mask, self._own)
            return StageOutput(probs, labels, mask, None, info)
        return StageOutput(probs, dict(self._own), mask.astype(np.uint8), None, info)

    # ---------------------------------------------------------------- storage
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        tensors: dict[str, torch.Tensor] = {}
        members = []
        for i, m in enumerate(self.members):
            spec, t = m.to_state(f"c{i}")
            members.append(spec)
            tensors.update(t)
        spec = {"members": members, "organ": self.organ, "organ_labels": self.organ_labels,
                "organ_names": {str(k): v for k, v in self.organ_names.items()}, "combine": self.combine,
                "weights": self.weights, "tta": self.tta, "keep_organ": self.keep_organ}
        return spec, tensors

    @classmethod
    def from_state(cls, name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: torch.device) -> "CascadeStage":
        members = [Member.from_state(ms, tensors) for ms in spec["members"]]
        return cls(name, members, spec["organ"], spec.get("organ_labels"), spec.get("organ_names"),
                   spec.get("combine", "mean"), spec.get("weights"), spec.get("tta"), bool(spec.get("keep_organ")))

    def describe(self) -> list[str]:
        organ = f"labels {self.organ_labels}" if self.organ_labels else "all labels"
        lines = [f"{self.name}: cascade inside stage {self.organ} ({organ}), {len(self.members)} member(s) "
                 f"combined by {self.combine}{', organ labels kept' if self.keep_organ else ''}; TTA flips "
                 f"{self.tta['flip'] or 'none'}, rot90 {'yes' if self.tta['rot90'] else 'no'}"]
        for m in self.members:
            r = m.cfg.preprocess.region
            where = (f"organ box + {r.margin_mm:g} mm{', square' if r.square else ''}"
                     f"{', resized to ' + str(r.size) if r.size else ''}, background {r.background}"
                     f"{', CLAHE ' + str(r.clahe) if r.clahe else ''}") if r else "whole image"
            lines.append(f"  member {m.name}: {m.cfg.model.get('name')} {m.meta.mode}, {len(m.folds)} fold(s), "
                         f"{where}, labels {m.meta.labels}")
        return lines

    # ------------------------------------------------------------------ build
    @classmethod
    def build(cls, name: str, config: CascadeConfig, ctx: BuildContext) -> "CascadeStage":
        built = list(getattr(ctx, "built", []) or [])
        if not built:
            raise ConfigError(f"stage {name}: a cascade stage needs an earlier stage that segments the organ.")
        organ = config.organ or built[-1].name
        earlier = {s.name: s for s in built}
        if organ not in earlier:
            raise ConfigError(f"stage {name}: organ '{organ}' is not an earlier stage.")
        organ_names = earlier[organ].labels
        if config.organ_labels:
            missing = [v for v in config.organ_labels if v not in organ_names]
            if missing:
                raise ConfigError(f"stage {name}: organ_labels {missing} are not labels of stage {organ} "
                                  f"({organ_names}).")
        specs = [MemberConfig(name=name, runs=config.runs)] if config.runs is not None else list(config.members or [])
        members = [Member.from_runs(s.name or f"member{i}", s.runs, ctx.base_dir, f"stage {name}")
                   for i, s in enumerate(specs)]
        for m in members:
            if m.cfg.preprocess.region is None:
                log.warning("stage %s: member %s was trained on whole images (no preprocess.region); it runs on the "
                            "whole image and its output is kept inside the organ", name, m.name)
        tta = {"flip": list(config.tta.flip), "rot90": bool(config.tta.rot90)}
        return cls(name, members, organ, config.organ_labels, organ_names, config.combine,
                   [s.weight for s in specs], tta, config.keep_organ)

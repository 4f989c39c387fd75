"""Stage ``postprocess``: per-label probability thresholds and connected-component steps applied
to an earlier stage's output, chosen on out-of-fold predictions by
:mod:`delineo.postprocess.search` (kept only if they raise the mean per-case Dice) or given.

::

    - name: clean
      kind: postprocess
      input: hippo                 # default: the previous stage
      threshold: search            # none | search | {1: 0.4, 2: 0.6}
      steps: search                # search | [] | [{name: largest}, {name: min_size, ml: 0.5}]
      connectivity: 26             # 6 | 18 | 26, or 4 | 8 in-plane; search tries all of one kind
"""

from __future__ import annotations

import logging
from typing import Any, Literal, Optional, Union

import numpy as np
import torch
from pydantic import Field, field_validator

from delineo.config import Strict
from delineo.errors import ConfigError
from delineo.infer.pipeline.stages import (BuildContext, CaseData, RunOptions, Stage, StageOutput, mask_from_probs,
                                           register_stage)
from delineo.postprocess.search import (CONNECTIVITY, DEFAULT_CANDIDATES, STEPS, SearchCase, apply_label_steps,
                                        describe_step, search_steps, search_thresholds)

log = logging.getLogger(__name__)


class PostprocessStageConfig(Strict):
    name: str
    kind: Literal["postprocess"] = "postprocess"
    input: Optional[str] = Field(None, description="stage whose output is cleaned (default: the previous one)")
    threshold: Union[Literal["none", "search"], dict[int, float]] = "none"
    threshold_candidates: list[float] = Field(default_factory=lambda: [0.3, 0.4, 0.5, 0.6, 0.7])
    steps: Union[Literal["search"], list[dict[str, Any]]] = "search"
    candidates: Optional[list[dict[str, Any]]] = Field(None, description="steps the search tries, in order")
    connectivity: Union[Literal["search"], int] = 26
    slice_axis: int = Field(2, ge=0, le=2, description="slice axis for 4/8 connectivity")
    min_gain: float = Field(1e-4, ge=0)

    @field_validator("connectivity")
    @classmethod
    def _conn(cls, v):
        if v != "search" and v not in CONNECTIVITY:
            raise ValueError(f"connectivity must be 6, 18, 26, 4 or 8, got {v}")
        return v

    @field_validator("steps", "candidates")
    @classmethod
    def _steps(cls, v):
        if isinstance(v, list):
            for s in v:
                if not isinstance(s, dict) or s.get("name") not in STEPS:
                    raise ValueError(f"each step needs a name, one of {', '.join(STEPS)}; got {s}")
        return v


@register_stage("postprocess")
class PostprocessStage(Stage):
    """Thresholds and per-label component steps on an earlier stage's output."""

    Config = PostprocessStageConfig

    def __init__(self, name: str, labels: dict[int, str], source: Optional[str] = None,
                 thresholds: Optional[dict[int, float]] = None, steps: Optional[dict[int, list[dict]]] = None,
                 tables: Optional[dict[str, Any]] = None) -> None:
        super().__init__(name)
        self.source = source
        self._labels = {int(k): v for k, v in labels.items()}
        self.thresholds = {int(k): float(v) for k, v in (thresholds or {}).items()}
        self.steps = {int(k): list(v) for k, v in (steps or {}).items()}
        self.tables = tables or {}

    @property
    def labels(self) -> dict[int, str]:
        return dict(self._labels)

    def apply(self, out: StageOutput, spacing) -> np.ndarray:
        mask = mask_from_probs(out.probs, out.values, self.thresholds) if self.thresholds else out.mask
        return apply_label_steps(mask, self.steps, spacing)

    def predict(self, case: CaseData, options: RunOptions) -> StageOutput:
        src = case.output(self.source)
        mask = self.apply(src, tuple(float(s) for s in case.images[0].spacing))
        return StageOutput(src.probs, src.labels, mask, src.uncertainty, dict(src.info))

    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        return ({"labels": {str(k): v for k, v in self._labels.items()}, "input": self.source,
                 "thresholds": {str(k): v for k, v in self.thresholds.items()},
                 "steps": {str(k): v for k, v in self.steps.items()}, "tables": self.tables}, {})

    @classmethod
    def from_state(cls, name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: torch.device) -> "PostprocessStage":
        return cls(name, spec["labels"], spec.get("input"), spec.get("thresholds"), spec.get("steps"),
                   spec.get("tables"))

    def describe(self) -> list[str]:
        thr = ", ".join(f"{self._labels.get(k, k)} {t:g}" for k, t in self.thresholds.items()) or "arg-max"
        lines = [f"{self.name}: postprocess of {self.source or 'the previous stage'}; thresholds {thr}"]
        for v, steps in self.steps.items():
            lines.append(f"  {self._labels.get(v, v)}: " + (" -> ".join(describe_step(s) for s in steps) or "no step"))
        for row in self.tables.get("steps", []):
            lines.append(f"    tried {self._labels.get(row['label'], row['label'])} {row['step']}: "
                         f"Dice {row['dice']:.4f}{' kept' if row['kept'] else ''}")
        return lines

    @classmethod
    def build(cls, name: str, config: PostprocessStageConfig, ctx: BuildContext) -> "PostprocessStage":
        if not ctx.built:
            raise ConfigError(f"stage {name}: a postprocess stage needs an earlier stage to clean.")
        src_stage = next((s for s in ctx.built if s.name == config.input), None) if config.input else ctx.built[-1]
        labels = src_stage.labels
        fixed_thr = config.threshold if isinstance(config.threshold, dict) else {}
        fixed_steps = config.steps if isinstance(config.steps, list) else []
        stage = cls(name, labels, config.input, fixed_thr, {v: list(fixed_steps) for v in labels})
        if config.threshold != "search" and config.steps != "search":
            return stage
        members = list(getattr(src_stage, "members", []) or [])
        if not members:
            raise ConfigError(f"stage {name}: cannot search, its input stage {src_stage.name} has no trained members "
                              "to take out-of-fold cases from.")
        values = list(labels)
        outs, refs, spacings = [], [], []
        for vc in ctx.validation_cases(members, labels):
            outs.append(vc.case.output(config.input))
            refs.append(vc.reference)
            spacings.append(vc.spacing)
        if not outs:
            raise ConfigError(f"stage {name}: no out-of-fold validation cases to search on.")
        if config.threshold == "search":
            stage.thresholds, table = search_thresholds([o.probs for o in outs], refs, values,
                                                        config.threshold_candidates, config.min_gain)
            stage.tables["thresholds"] = table
            ctx.record(name, "thresholds", table)
        if config.steps == "search":
            base = config.candidates or DEFAULT_CANDIDATES
            conns = ([c for c in CONNECTIVITY if CONNECTIVITY[c][0] == 3] if config.connectivity == "search"
                     else [config.connectivity])
            cands = []
            for spec in base:
                for c in conns:
                    cand = {**spec, "connectivity": c, **({"slice_axis": config.slice_axis} if c in (4, 8) else {})}
                    if cand not in cands:
                        cands.append(cand)
            cases = [SearchCase(mask_from_probs(o.probs, o.values, stage.thresholds) if stage.thresholds else o.mask,
                                r, s) for o, r, s in zip(outs, refs, spacings)]
            stage.steps, table = search_steps(cases, values, cands, config.min_gain)
            stage.tables["steps"] = table
            ctx.record(name, "steps", table)
        log.info("stage %s: thresholds %s, steps %s", name, stage.thresholds,
                 {v: [describe_step(s) for s in st] for v, st in stage.steps.items()})
        return stage

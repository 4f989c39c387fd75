"""``delineo pipeline build``: assemble a pipeline from trained run folders, running each stage's
searches on out-of-fold validation cases, and write the ``.delineo`` file.

Out-of-fold means: a case is used only if, for every member of the stage being built and of
every earlier stage, some fold of that member had it in its validation list; it is then
predicted by exactly those folds. Cases in no fold's validation list (a held-out test split)
are never used, so the pipeline's test score stays honest.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch
from tqdm import tqdm

from delineo.data.sources import load_dataset, reference_for
from delineo.errors import ConfigError
from delineo.infer.pipeline.config import load_pipeline_config
from delineo.infer.pipeline.members import Member
from delineo.infer.pipeline.runner import Pipeline
from delineo.infer.pipeline.stages import BuildContext, CaseData, RunOptions, Stage, ValidationCase, stage_class

log = logging.getLogger(__name__)


def _members_of(stage: Stage) -> list[Member]:
    return list(getattr(stage, "members", []) or [])


class RunBuildContext(BuildContext):
    """Validation cases from the members' own dataset and splits (``cases.json`` of each run)."""

    def __init__(self, base_dir: Path, device: torch.device, max_cases: Optional[int] = None,
                 progress: bool = True, source: str = "pipeline") -> None:
        self.base_dir, self.device, self.max_cases, self.progress = base_dir, device, max_cases, progress
        self.source = source
        self.built: list[Stage] = []
        self.tables: dict[str, Any] = {}
        self._datasets: dict[str, Any] = {}
        self._outputs: dict[str, dict] = {}  # case id -> outputs of the stages built so far

    def record(self, stage: str, key: str, table: Any) -> None:
        self.tables[f"{stage}.{key}"] = table

    def upstream(self, case: CaseData) -> CaseData:
        known = self._outputs.setdefault(case.case_id, {})
        case.outputs.update(known)
        opts = RunOptions(device=self.device, exclude_case=case.case_id or None)
        for stage in self.built:
            if stage.name not in case.outputs:
                case.outputs[stage.name] = stage.predict(case, opts)
        known.update(case.outputs)
        return case

    def eligible(self, members: Sequence[Member]) -> list[tuple[str, list[list[int]]]]:
        """(case id, usable folds per member of ``members``) for out-of-fold cases."""
        everyone = list(members) + [m for s in self.built for m in _members_of(s)]
        for m in everyone:
            for f in m.folds:
                if f.val_ids is None:
                    raise ConfigError(f"member {m.name}: run {f.source} has no cases.json, so its out-of-fold "
                                      "cases are unknown and nothing can be searched on it.")
        ids = sorted({cid for f in members[0].folds for cid in f.val_ids or []})
        out = []
        for cid in ids:
            per = [[j for j, f in enumerate(m.folds) if cid in (f.val_ids or [])] for m in everyone]
            if all(per):
                out.append((cid, per[: len(members)]))
        if self.max_cases and len(out) > self.max_cases:
            pick = np.linspace(0, len(out) - 1, self.max_cases).round().astype(int)
            out = [out[i] for i in sorted(set(pick.tolist()))]
        return out

    def _dataset(self, member: Member):
        key = member.cfg.data.model_dump_json()
        if key not in self._datasets:
            self._datasets[key] = load_dataset(member.cfg.data)
        return self._datasets[key]

    def validation_cases(self, members: Sequence[Member], labels: Optional[dict[int, str]] = None,
                         ) -> Iterator[ValidationCase]:
        dataset = self._dataset(members[0])
        by_id = {c.case_id: c for c in dataset.cases}
        labels = labels or members[0].meta.labels
        chosen = self.eligible(members)
        log.info("searching on %d out-of-fold case(s)", len(chosen))
        for cid, folds in tqdm(chosen, desc="search", unit="case", leave=False, disable=not self.progress):
            images, label = by_id[cid].load()
            if label is None:
                continue
            case = self.upstream(CaseData(images, cid))
            ref = reference_for(np.asarray(label.array), dataset.labels, labels)
            yield ValidationCase(case, ref, tuple(float(s) for s in label.spacing), folds)


def build_pipeline(path: str | Path, out: str | Path, device: str = "auto", max_cases: Optional[int] = None,
                   progress: bool = True) -> tuple[Path, Pipeline]:
    """Build the pipeline described in ``path`` and write it to ``out`` (a ``.delineo`` file)."""
    from delineo.infer.predictor import pick_device

    path = Path(path)
    cfg, sections = load_pipeline_config(path)
    dev = pick_device(device if device != "auto" else cfg.build.device)
    ctx = RunBuildContext(path.parent.resolve(), dev, max_cases or cfg.build.max_cases, progress, str(path))
    t0 = time.perf_counter()
    for raw, section in zip(cfg.stages, sections):
        cls = stage_class(str(raw["kind"]))
        t1 = time.perf_counter()
        stage = cls.build(str(raw["name"]), section, ctx)
        ctx.built.append(stage)
        log.info("stage %s (%s) built in %.1f s", stage.name, stage.kind, time.perf_counter() - t1)
    pipe = Pipeline(cfg.name, ctx.built, {k: list(v) for k, v in cfg.colours.items()}, ctx.tables, dev)
    written = pipe.save(out)
    log.info("%s: pipeline %s written in %.1f s", written, cfg.name, time.perf_counter() - t0)
    return written, pipe

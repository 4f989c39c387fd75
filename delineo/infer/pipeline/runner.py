"""The pipeline runner: stages applied in order to one case, the last stage's output returned on
the exact grid of the input, like :meth:`delineo.infer.predictor.Predictor.predict_images`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from delineo.errors import InputError
from delineo.infer.pipeline.stages import CaseData, RunOptions, Stage, StageOutput, stage_class
from delineo.io.image import Image
from delineo.modelfile.pipeline_file import PipelineFile, read_pipeline_file, write_pipeline_file

log = logging.getLogger(__name__)


class Pipeline:
    """Stages in order; the result is the last stage's output."""

    def __init__(self, name: str, stages: list[Stage], colours: Optional[dict[int, list[int]]] = None,
                 tables: Optional[dict[str, Any]] = None, device: torch.device | str = "cpu") -> None:
        if not stages:
            raise InputError(f"pipeline {name}: it has no stages.")
        self.name, self.stages = name, stages
        self.colours = {int(k): list(v) for k, v in (colours or {}).items()}
        self.tables = tables or {}
        self.device = torch.device(device)

    @property
    def labels(self) -> dict[int, str]:
        return self.stages[-1].labels

    @property
    def channels(self) -> list[str]:
        for stage in self.stages:
            if stage.channels:
                return stage.channels
        return []

    def run_case(self, case: CaseData, options: Optional[RunOptions] = None,
                 until: Optional[int] = None) -> CaseData:
        """Run stages ``[:until]`` on ``case`` (skipping those whose output it already has)."""
        options = options or RunOptions(device=self.device)
        for stage in self.stages[:until]:
            if stage.name not in case.outputs:
                case.outputs[stage.name] = stage.predict(case, options)
        return case

    def predict_images(self, images: list[Image], uncertainty: Optional[str] = None,
                       ) -> tuple[Image, Image, Optional[Image]]:
        """Segment one case from its channel images: (mask, probabilities, uncertainty or None)
        as Images on the exact grid (shape and affine) of the first channel."""
        if self.channels and len(images) != len(self.channels):
            raise InputError(f"{images[0].meta.get('path', 'input')}: the pipeline expects {len(self.channels)} "
                             f"channel(s) ({', '.join(self.channels)}), got {len(images)}.")
        case = self.run_case(CaseData(list(images)), RunOptions(device=self.device, uncertainty=uncertainty))
        out: StageOutput = case.last  # type: ignore[assignment]
        ref = images[0]
        mask = Image(out.mask.astype(np.uint8), ref.affine.copy(), "SEG", dict(ref.meta))
        probs = Image(out.probs.astype(np.float32), ref.affine.copy(), "PROB", dict(ref.meta))
        unc = None
        if uncertainty:
            if out.uncertainty is None:
                raise InputError(f"pipeline {self.name}: its last stage ({self.stages[-1].name}) gives no "
                                 "uncertainty map.")
            unc = Image(out.uncertainty.astype(np.float32), ref.affine.copy(), "UNC", dict(ref.meta))
        return mask, probs, unc

    # ---------------------------------------------------------------- storage
    def to_file(self) -> PipelineFile:
        stages, tensors = [], []
        for stage in self.stages:
            spec, t = stage.to_state()
            stages.append({"name": stage.name, "kind": stage.kind, "spec": spec})
            tensors.append(t)
        manifest = {"name": self.name, "labels": {str(k): v for k, v in self.labels.items()},
                    "colours": {str(k): v for k, v in self.colours.items()}, "channels": self.channels,
                    "stages": stages, "tables": self.tables}
        return PipelineFile(manifest, tensors)

    def save(self, path: str | Path) -> Path:
        return write_pipeline_file(path, self.to_file())

    @classmethod
    def from_file_data(cls, pf: PipelineFile, device: torch.device | str = "cpu", source: str = "") -> "Pipeline":
        m = pf.manifest
        stages = []
        for entry, tensors in zip(m.get("stages", []), pf.tensors):
            try:
                cls_ = stage_class(str(entry["kind"]), f"{source}: stage {entry.get('name')}")
                stages.append(cls_.from_state(str(entry["name"]), entry["spec"], tensors, torch.device(device)))
            except (KeyError, TypeError) as exc:
                raise InputError(f"{source}: damaged pipeline file, stage {entry.get('name')} lacks {exc}.") from None
        return cls(str(m.get("name", "pipeline")), stages, m.get("colours"), m.get("tables"), device)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto") -> "Pipeline":
        from delineo.infer.predictor import pick_device

        return cls.from_file_data(read_pipeline_file(path), pick_device(device), str(path))

    def describe(self) -> list[str]:
        lines = [f"pipeline {self.name}: {len(self.stages)} stage(s); input channels "
                 f"{', '.join(self.channels) or '?'}; labels " +
                 ", ".join(f"{k} {v}" for k, v in self.labels.items())]
        for stage in self.stages:
            lines += ["  " + line for line in stage.describe()]
        return lines

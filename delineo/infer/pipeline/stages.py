"""The Stage interface and the ``STAGES`` registry: a pipeline is an ordered list of stages.

What a stage receives
    ``predict(case, options)`` gets a :class:`CaseData`: the case's channel ``Image`` objects on
    their original grid (exactly what ``Predictor.predict_images`` gets) and ``case.outputs``,
    the :class:`StageOutput` of every earlier stage by stage name, in order. A stage that works
    on another stage's result names it in its spec (``input: organ``); ``case.last`` is the
    previous stage's output. Each member preprocesses the images with its own experiment's
    ``preprocess`` section, so members with different spacings can be combined.

What it returns
    A :class:`StageOutput` on the *input grid* (shape and affine of ``images[0]``):
    ``probs`` (1 + L, *S) float32 with channel 0 the background and channel i the label
    ``values[i - 1]``; ``mask`` (*S) uint8 label values; optionally ``uncertainty`` (*S) and
    ``info`` (JSON-able facts such as a gate's score). A one-output sigmoid network's p becomes
    the two channels (1 - p, p), so every stage speaks the same language. The pipeline's result
    is the output of its last stage.

How it is stored and rebuilt
    ``to_state()`` returns ``(spec, tensors)``: a JSON-able dict (settings, member configs and
    metas, chosen options, search tables) and a flat ``{key: torch.Tensor}`` dict (weights).
    The ``.delineo`` file (``delineo.modelfile.pipeline_file``) stores both with checksums;
    ``STAGES[kind].from_state(name, spec, tensors, device)`` rebuilds the stage. Nothing else
    is stored and nothing in the file is executed: tensors are loaded with ``weights_only``.

How a build-time search gets validation cases
    ``Stage.build(name, config, ctx)`` gets a :class:`BuildContext`. ``ctx.validation_cases(
    members)`` yields :class:`ValidationCase` records (images, reference on the input grid)
    for cases that *every* member has a fold not trained on, each with the folds to use per
    member (out-of-fold), never the held-out test split (cases in no fold's validation list).
    ``ctx.upstream(case)`` fills ``case.outputs`` with the earlier stages already built, so a
    stage can search its options on what it will really receive. ``ctx.record(name, table)``
    keeps the table of what each candidate did; it ends up in the file and in ``delineo info``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Optional, Sequence

import numpy as np
import torch

from delineo.errors import ConfigError
from delineo.io.image import Image
from delineo.registry import closest

log = logging.getLogger(__name__)


@dataclass
class StageOutput:
    """One stage's result for one case, on the input grid."""

    probs: np.ndarray  # (1 + L, *S) float32; channel 0 background, channel i = values[i - 1]
    labels: dict[int, str]  # label value -> name, in channel order (values = list(labels))
    mask: np.ndarray  # (*S) uint8 label values
    uncertainty: Optional[np.ndarray] = None  # (*S) float32, when asked for
    info: dict[str, Any] = field(default_factory=dict)  # JSON-able facts (e.g. a gate's score)

    @property
    def values(self) -> list[int]:
        return list(self.labels)


@dataclass
class CaseData:
    """What a stage sees of one case: channel images on the original grid + earlier outputs."""

    images: list[Image]
    case_id: str = ""
    outputs: dict[str, StageOutput] = field(default_factory=dict)

    @property
    def last(self) -> Optional[StageOutput]:
        return next(reversed(self.outputs.values())) if self.outputs else None

    def output(self, name: Optional[str]) -> StageOutput:
        """The output of stage ``name`` (the previous stage when ``name`` is None)."""
        if name is None:
            if not self.outputs:
                raise ConfigError("this stage reads a previous stage's output, but it is the first stage.")
            return self.last  # type: ignore[return-value]
        if name not in self.outputs:
            raise ConfigError(f"stage input '{name}' is not an earlier stage{closest(name, self.outputs)}.")
        return self.outputs[name]


@dataclass
class RunOptions:
    """How a pipeline is run (not stored in the file): device and optional uncertainty."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    uncertainty: Optional[str] = None  # None, "variance" or "entropy"
    #: build time only: predict this case with the folds that did not train on it (out-of-fold)
    exclude_case: Optional[str] = None


@dataclass
class ValidationCase:
    """A case for a build-time search: images and reference on the input grid, and per member
    the indices of its folds that did not train on this case (their mean is out-of-fold)."""

    case: CaseData
    reference: np.ndarray  # (*S) label values, in the stage's label terms
    spacing: tuple[float, ...]
    folds: list[list[int]]  # per member: usable fold indices


class BuildContext(ABC):
    """What ``Stage.build`` may use; implemented by ``delineo.infer.pipeline.build``."""

    @abstractmethod
    def validation_cases(self, members: Sequence[Any], labels: Optional[dict[int, str]] = None,
                         ) -> Iterator[ValidationCase]:
        """Out-of-fold validation cases of ``members`` (with ``case.outputs`` filled by the
        stages built so far); references mapped to ``labels`` when given (e.g. a union)."""

    @abstractmethod
    def upstream(self, case: CaseData) -> CaseData:
        """Run the stages built so far on ``case`` (fills ``case.outputs``)."""

    @abstractmethod
    def record(self, stage: str, key: str, table: Any) -> None:
        """Keep a search table (JSON-able) for the file and ``delineo info``."""

    device: torch.device = torch.device("cpu")
    built: list["Stage"] = []  # the stages built so far, in order (set by the implementation)
    base_dir: Path = Path(".")  # run paths in the pipeline file are relative to its folder
    max_cases: Optional[int] = None  # bound on validation cases per search (CPU time)
    source: str = "pipeline"  # the pipeline file, named in build errors


class Stage(ABC):
    """One step of a pipeline. Subclasses register with ``@register_stage("kind")``."""

    kind: ClassVar[str] = ""

    def __init__(self, name: str) -> None:
        self.name = name

    @abstractmethod
    def predict(self, case: CaseData, options: RunOptions) -> StageOutput:
        """This stage's output for ``case`` on the input grid (see the module docstring)."""

    @property
    @abstractmethod
    def labels(self) -> dict[int, str]:
        """Label values -> names this stage outputs."""

    @property
    def channels(self) -> list[str]:
        """Input channel names the stage needs (empty when it reads only earlier outputs)."""
        return []

    @abstractmethod
    def to_state(self) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        """(JSON-able spec, flat tensors) that :meth:`from_state` rebuilds the stage from."""

    @classmethod
    @abstractmethod
    def from_state(cls, name: str, spec: dict[str, Any], tensors: dict[str, torch.Tensor],
                   device: torch.device) -> "Stage":
        """Rebuild a stage from what :meth:`to_state` returned."""

    @classmethod
    @abstractmethod
    def build(cls, name: str, config: Any, ctx: BuildContext) -> "Stage":
        """Assemble the stage from its pipeline-file section (``config``), running its searches
        on ``ctx``'s validation cases."""

    def describe(self) -> list[str]:
        """Lines for ``delineo info``."""
        return [f"{self.name}: {self.kind}"]


STAGES: dict[str, type[Stage]] = {}


def register_stage(kind: str):
    """Class decorator: make ``kind`` usable as ``stages[].kind`` in a pipeline file."""

    def deco(cls: type[Stage]) -> type[Stage]:
        if kind in STAGES and STAGES[kind] is not cls:
            raise ValueError(f"pipeline stage kind '{kind}' is registered twice")
        cls.kind = kind
        STAGES[kind] = cls
        return cls

    return deco


def stage_class(kind: str, where: str = "stages") -> type[Stage]:
    load_stages()
    if kind not in STAGES:
        raise ConfigError(f"unknown stage kind '{kind}' at {where}{closest(kind, STAGES)}; "
                          f"known: {', '.join(sorted(STAGES))}.")
    return STAGES[kind]


_BUILTIN = ("segment", "postprocess", "gate", "cascade")


def load_stages() -> None:
    """Import the built-in stage modules (each registers itself); absent ones are skipped."""
    import importlib

    for mod in _BUILTIN:
        try:
            importlib.import_module(f"delineo.infer.pipeline.{mod}")
        except ModuleNotFoundError as exc:
            if exc.name != f"delineo.infer.pipeline.{mod}":
                raise


# ---------------------------------------------------------------- helpers shared by stages
def two_channel(probs: np.ndarray) -> np.ndarray:
    """(1, *S) sigmoid output -> (2, *S) background/foreground; others unchanged."""
    if probs.shape[0] == 1:
        return np.concatenate([1.0 - probs, probs]).astype(np.float32)
    return probs.astype(np.float32, copy=False)


def mask_from_probs(probs: np.ndarray, values: Sequence[int],
                    thresholds: Optional[dict[int, float]] = None) -> np.ndarray:
    """Label map from (1 + L, *S) probabilities: the arg-max channel; with ``thresholds`` (label
    value -> t), a label is a candidate where its probability >= t and the voxel takes the
    candidate with the highest probability (background where there is none); a label without a
    threshold is a candidate where it beats the background probability. For two
    channels, t = 0.5 is exactly the arg-max."""
    lut = np.array([0, *values], dtype=np.uint8)
    if not thresholds:
        return lut[probs.argmax(0)]
    fg = probs[1:].copy()
    for i, v in enumerate(values):
        t = thresholds.get(int(v))
        if t is not None:
            fg[i][fg[i] < t] = -1.0
        else:  # no threshold: the label must beat background as in arg-max
            fg[i][fg[i] <= probs[0]] = -1.0
    best = fg.argmax(0)
    ok = np.take_along_axis(fg, best[None], 0)[0] >= 0
    return np.where(ok, lut[best + 1], 0).astype(np.uint8)

"""What ``delineo predict`` can run, by model kind: a small registry of loaders.

Each loader recognises a model path (a run folder / ``.pt`` checkpoint, a ``.delineo``
pipeline file, ...) and returns a :class:`CasePredictor`: the one interface ``predict_paths``
uses, so every output format works with every kind of model. A new kind registers a loader
with ``@model_loader(name, test)`` instead of adding a branch to ``delineo.infer.run``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Protocol

from delineo.errors import InputError
from delineo.io.image import Image

log = logging.getLogger(__name__)


class CasePredictor(Protocol):
    """A loaded model as ``predict`` sees it."""

    name: str  # for DICOM series descriptions and logs
    channels: list[str]  # input channel names, in order
    labels: dict[int, str]  # label value -> name of the masks it writes
    colors: Optional[dict[int, tuple[int, int, int]]]  # label value -> RGB for DICOM outputs (None: defaults)
    save_probabilities: bool  # the model asks for probabilities to be written

    def predict(self, images: list[Image]) -> tuple[Image, Image, dict[str, Image]]:
        """(mask, probabilities, extra maps by suffix, e.g. {"uncertainty": ...}) on the input grid."""


@dataclass
class LoadOptions:
    device: str = "auto"
    tta: Optional[bool] = None  # None: the model's own setting
    uncertainty: Optional[str] = None  # "variance" or "entropy": a map written beside the mask


Loader = Callable[[Path, LoadOptions], CasePredictor]
LOADERS: list[tuple[str, Callable[[Path], bool], Loader]] = []


def model_loader(name: str, test: Callable[[Path], bool]) -> Callable[[Loader], Loader]:
    """Register ``fn`` to load models for which ``test(path)`` is true (earlier ones win)."""

    def deco(fn: Loader) -> Loader:
        LOADERS.append((name, test, fn))
        return fn

    return deco


class _CheckpointPredictor:
    """A run folder or checkpoint through :class:`~delineo.infer.predictor.Predictor`."""

    def __init__(self, path: Path, opts: LoadOptions) -> None:
        from delineo.infer.predictor import Predictor

        if opts.uncertainty:
            raise InputError(f"{path}: --uncertainty needs a .delineo pipeline (it compares augmentations and "
                             "members); a single checkpoint has none to compare.")
        self.predictor = Predictor.from_checkpoint(path, device=opts.device, tta=opts.tta)
        self.name = self.predictor.cfg.name
        self.channels = list(self.predictor.meta.channels)
        self.labels = dict(self.predictor.meta.labels)
        self.colors = None
        self.save_probabilities = self.predictor.cfg.infer.save_probabilities

    def predict(self, images: list[Image]) -> tuple[Image, Image, dict[str, Image]]:
        mask, probs = self.predictor.predict_images(images)
        return mask, probs, {}


class _PipelinePredictor:
    """A ``.delineo`` file through :class:`~delineo.infer.pipeline.runner.Pipeline`."""

    def __init__(self, path: Path, opts: LoadOptions) -> None:
        from delineo.infer.pipeline.runner import Pipeline
        from delineo.infer.pipeline.tta import UNCERTAINTY

        if opts.uncertainty and opts.uncertainty not in UNCERTAINTY:
            raise InputError(f"--uncertainty {opts.uncertainty}: choose one of {', '.join(UNCERTAINTY)}.")
        self.pipeline = Pipeline.load(path, opts.device)
        if opts.tta:
            log.warning("%s: --tta ignored; a pipeline's test-time augmentation was chosen when it was built "
                        "(see delineo info)", path)
        self.uncertainty = opts.uncertainty
        self.name = self.pipeline.name
        self.channels = self.pipeline.channels
        self.labels = self.pipeline.labels
        self.colors = {k: tuple(v) for k, v in self.pipeline.colours.items()} or None
        self.save_probabilities = False

    def predict(self, images: list[Image]) -> tuple[Image, Image, dict[str, Image]]:
        mask, probs, unc = self.pipeline.predict_images(images, self.uncertainty)
        return mask, probs, ({"uncertainty": unc} if unc is not None else {})


def _is_pipeline(path: Path) -> bool:
    from delineo.modelfile.pipeline_file import is_pipeline_file

    return is_pipeline_file(path)


model_loader("pipeline", _is_pipeline)(_PipelinePredictor)
model_loader("checkpoint", lambda path: True)(_CheckpointPredictor)


def load_predictor(path: str | Path, device: str = "auto", tta: Optional[bool] = None,
                   uncertainty: Optional[str] = None) -> CasePredictor:
    """The first registered loader that recognises ``path``."""
    path = Path(path)
    opts = LoadOptions(device, tta, uncertainty)
    for _, test, loader in LOADERS:
        if test(path):
            return loader(path, opts)
    raise InputError(f"{path}: not a model Delineo can run.")

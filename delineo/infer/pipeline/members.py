"""Members of a stage: trained models, each one run or several fold runs of one experiment.

A member's folds are averaged into one prediction (a k-fold model); a stage combines its
members. Each fold keeps its resolved experiment, its :class:`ModelMeta` and its weights, which
is all :class:`~delineo.infer.predictor.Predictor` needs, plus the ids of the cases it trained
on, so a build-time search can use each case's out-of-fold prediction (the folds that did not
see it). The case ids are used at build time only and are not written into the ``.delineo`` file.
"""

from __future__ import annotations

import glob
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Generic, Optional, TypeVar

import torch

from delineo.config import ExperimentConfig, config_from_dict
from delineo.errors import ConfigError, InputError
from delineo.infer.predictor import Predictor, build_model
from delineo.modelfile.checkpoint import ModelMeta, load_checkpoint

log = logging.getLogger(__name__)


@dataclass
class Fold:
    """One trained run: config, meta, weights (and, at build time, its train/val case ids)."""

    config: dict[str, Any]
    meta: dict[str, Any]
    state: dict[str, torch.Tensor]
    source: str = ""
    train_ids: Optional[set[str]] = None
    val_ids: Optional[list[str]] = None

    @property
    def cfg(self) -> ExperimentConfig:
        if not hasattr(self, "_cfg"):
            self._cfg = config_from_dict(self.config, source=self.source or "pipeline member")
        return self._cfg

    @property
    def model_meta(self) -> ModelMeta:
        return ModelMeta.from_dict(self.meta)

    def network(self) -> torch.nn.Module:
        """The fold's network with its weights, on the CPU in training mode (as built)."""
        model = build_model(self.cfg, self.model_meta)
        model.load_state_dict(self.state)
        return model

    @classmethod
    def from_run(cls, path: Path) -> "Fold":
        ckpt = load_checkpoint(path)
        run_dir = Path(ckpt["path"]).parent.parent if Path(ckpt["path"]).parent.name == "checkpoints" else None
        train_ids = val_ids = None
        if run_dir is not None and (run_dir / "cases.json").is_file():
            cases = json.loads((run_dir / "cases.json").read_text())
            train_ids, val_ids = set(cases.get("train", [])), list(cases.get("val", []))
        return cls(ckpt["config"], ckpt["meta"], ckpt["model_state"], str(path), train_ids, val_ids)


@dataclass
class Member:
    """A trained model: one or more fold runs whose probabilities are averaged."""

    name: str
    folds: list[Fold] = field(default_factory=list)

    @property
    def meta(self) -> ModelMeta:
        return self.folds[0].model_meta

    @property
    def cfg(self) -> ExperimentConfig:
        return self.folds[0].cfg

    def usable_folds(self, case_id: str) -> list[int]:
        """Folds that did not train on ``case_id`` (all folds when the training cases are not
        known, as in a loaded ``.delineo`` file)."""
        return [j for j, f in enumerate(self.folds) if f.train_ids is None or case_id not in f.train_ids]

    @classmethod
    def from_runs(cls, name: str, runs: list[str], base: Path, where: str) -> "Member":
        """Read the runs (run folders, checkpoint files or glob patterns such as
        ``runs/hippo/fold_*``) relative to ``base``; all must predict the same labels."""
        paths: list[Path] = []
        for pattern in runs:
            full = str(Path(pattern).expanduser() if Path(pattern).expanduser().is_absolute() else base / pattern)
            found = sorted(glob.glob(full)) if any(ch in pattern for ch in "*?[") else [full]
            if not found:
                raise InputError(f"{where}: no run matches '{pattern}' (looked in {base}).")
            paths += [Path(p) for p in found]
        folds = [Fold.from_run(p) for p in paths]
        first = folds[0].model_meta
        for f in folds[1:]:
            m = f.model_meta
            if m.labels != first.labels or m.channels != first.channels:
                raise ConfigError(f"{where}: run {f.source} predicts labels {m.labels} from channels {m.channels}, "
                                  f"but {folds[0].source} predicts {first.labels} from {first.channels}.")
        return cls(name, folds)

    def to_state(self, prefix: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
        spec = {"name": self.name, "folds": []}
        tensors: dict[str, torch.Tensor] = {}
        for j, f in enumerate(self.folds):
            key = f"{prefix}.f{j}"
            spec["folds"].append({"config": f.config, "meta": f.meta, "source": Path(f.source).name
                                  if f.source else "", "tensors": key})
            for k, v in f.state.items():
                tensors[f"{key}.{k}"] = v.detach().cpu().contiguous()
        return spec, tensors

    @classmethod
    def from_state(cls, spec: dict[str, Any], tensors: dict[str, torch.Tensor]) -> "Member":
        folds = []
        for fs in spec["folds"]:
            pre = fs["tensors"] + "."
            state = {k[len(pre):]: v for k, v in tensors.items() if k.startswith(pre)}
            folds.append(Fold(fs["config"], fs["meta"], state, fs.get("source", "")))
        return cls(spec["name"], folds)


T = TypeVar("T")


class FoldCache(Generic[T]):
    """One object per (member, fold) and device, made by ``make(fold, device)`` on first use
    and remade when the device changes: a stage predicts many cases with the same folds, so
    each network is built once (predictors for the segment and cascade stages, bare
    classifiers for the gate)."""

    def __init__(self, members: list[Member], make: Callable[[Fold, torch.device], T]) -> None:
        self.members, self.make = members, make
        self._cache: dict[tuple[int, int], tuple[torch.device, T]] = {}

    def __call__(self, i: int, j: int, device: torch.device | str) -> T:
        device = torch.device(device)
        hit = self._cache.get((i, j))
        if hit is None or hit[0] != device:
            hit = (device, self.make(self.members[i].folds[j], device))
            self._cache[(i, j)] = hit
        return hit[1]


def fold_predictors(members: list[Member]) -> FoldCache[Predictor]:
    """A :class:`FoldCache` of segmentation predictors (no TTA: the stage applies its own)."""
    return FoldCache(members, lambda fold, device: Predictor(fold.network(), fold.cfg, fold.model_meta, device,
                                                             tta=False))

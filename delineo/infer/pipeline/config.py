"""The pipeline file schema (YAML or JSON), validated like an experiment file: an unknown key, a
wrong type or an impossible value is one :class:`~delineo.errors.ConfigError` sentence naming
the file, the place (``stages[1].combine``) and the closest valid name.

::

    name: hippocampus_ensemble
    stages:
      - name: hippo
        kind: segment                       # segment | postprocess | gate | cascade
        runs: [runs/hippocampus/fold_*]     # run folders relative to this file
        tta: {flip: search}
      - name: clean
        kind: postprocess
        threshold: search
        steps: search
    build: {max_cases: 40}

Each stage kind's section is checked against its stage class's ``Config`` (a pydantic model).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml
from pydantic import BaseModel, Field, ValidationError

from delineo.config import Strict, _unknown_keys
from delineo.errors import ConfigError
from delineo.infer.pipeline.stages import stage_class
from delineo.registry import closest


class BuildOptions(Strict):
    max_cases: Optional[int] = Field(None, ge=1, description="out-of-fold cases per search (CPU time bound)")
    device: str = "auto"


class PipelineConfig(Strict):
    name: str = "pipeline"
    stages: list[dict[str, Any]] = Field(min_length=1)
    build: BuildOptions = BuildOptions()
    colours: dict[int, tuple[int, int, int]] = Field(default_factory=dict, description="label value -> RGB")


def _one(err: ValidationError, source: str, where: str) -> ConfigError:
    e = err.errors()[0]
    place = ".".join(str(p) for p in e["loc"])
    place = f"{where}.{place}" if where and place else (where or place or "(top level)")
    msg = str(e["msg"]).removeprefix("Value error, ")
    return ConfigError(f"{source}: invalid value at {place}: {msg}.")


def pipeline_from_dict(data: Any, source: str = "pipeline") -> tuple[PipelineConfig, list[BaseModel]]:
    """Validate a raw pipeline dict: (the pipeline, each stage's validated section)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a pipeline file must be a mapping with 'stages', got {type(data).__name__}.")
    _unknown_keys(PipelineConfig, data, "", source)
    try:
        cfg = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise _one(exc, source, "") from None
    sections: list[BaseModel] = []
    names: list[str] = []
    for i, raw in enumerate(cfg.stages):
        where = f"stages[{i}]"
        if not isinstance(raw, dict) or "kind" not in raw or "name" not in raw:
            raise ConfigError(f"{source}: {where} needs a 'name' and a 'kind'.")
        try:
            cls = stage_class(str(raw["kind"]), f"{where}.kind")
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}") from None
        model: type[BaseModel] = getattr(cls, "Config")
        _unknown_keys(model, raw, where, source)
        try:
            section = model.model_validate(raw)
        except ValidationError as exc:
            raise _one(exc, source, where) from None
        name = str(raw["name"])
        if name in names:
            raise ConfigError(f"{source}: {where}.name '{name}' is used by an earlier stage; stage names must differ.")
        for key in ("input", "organ", "gate"):
            ref = getattr(section, key, None)
            if isinstance(ref, str) and ref not in names:
                raise ConfigError(f"{source}: {where}.{key} '{ref}' is not an earlier stage"
                                  f"{closest(ref, names)}; earlier stages: {', '.join(names) or 'none'}.")
        names.append(name)
        sections.append(section)
    return cfg, sections


def load_pipeline_config(path: str | Path) -> tuple[PipelineConfig, list[BaseModel]]:
    """Read and validate a pipeline file (YAML or JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: pipeline file not found.")
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (yaml.YAMLError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML/JSON ({first}).") from None
    return pipeline_from_dict(data, str(path))

"""Reference pages generated from the code, so the documentation cannot drift from it: the
experiment-file reference from the pydantic schema in :mod:`delineo.config` (every key, type,
default and description) and the command-line reference from :func:`delineo.cli.build_parser`
(every verb, argument, default and help). The MkDocs hook ``docs/_hooks/generate.py`` calls
these while the site is built; ``tests/test_docs.py`` checks them against the schema and parser.
"""

from __future__ import annotations

import argparse
import json
import typing
from typing import Any, Iterator

from pydantic import BaseModel
from pydantic_core import PydanticUndefined


def _type_name(annotation: Any) -> str:
    """A short, readable type: ``int``, ``list[int]``, ``'msd' | 'csv'``, ``SamplingConfig``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is type(None):
        return "null"
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        return " | ".join(_type_name(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _submodel(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _submodel(arg)
        if found is not None:
            return found
    return None


def _default(field) -> str:
    if field.default_factory is not None:
        value = field.default_factory()
    elif field.default is PydanticUndefined:
        return "*required*"
    else:
        value = field.default
    if isinstance(value, BaseModel):
        return "(section defaults)"
    if isinstance(value, list) and value and isinstance(value[0], BaseModel):
        value = [v.model_dump(mode="json", exclude_defaults=True) for v in value]
    return f"`{json.dumps(value, default=str)}`"


#: Descriptions of keys whose schema field has none (the schema's own description wins; a key
#: listed here that the schema no longer has fails tests/test_docs.py).
DESCRIPTIONS: dict[str, str] = {
    "name": "experiment name: the run folder is runs/<name>/; a plain folder name",
    "data": "the dataset, its labels and how it is split",
    "data.source.type": "msd: MSD / nnU-Net folder; csv: one row per case; hdf5: deoxys fold layout",
    "data.source.path": "the folder or file; relative paths are relative to the experiment file; "
                        "package:REL names data inside the installed package (e.g. package:sample_data/hippocampus)",
    "data.source.label_column": "CSV: the column with the label file",
    "data.source.id_column": "CSV: the column with the case id (default: id, case, or the first image's name)",
    "data.source.group_column": "CSV: the column to stratify folds by (default: group)",
    "data.folds": "number of cross-validation folds (patient-level, seeded); HDF5 folds are kept",
    "data.seed": "seed of the split",
    "preprocess": "orientation, spacing, cropping and intensity, each with an exact inverse for predictions",
    "preprocess.interpolation": "image interpolation when resampling (labels always nearest)",
    "preprocess.crop_foreground": "crop to the bounding box of the non-zero voxels (undone on output)",
    "preprocess.intensity[].percentiles": "percentile preset: the clip range in percentiles",
    "sampling": "how training samples are drawn from the cases",
    "sampling.mode": "3d patches, 2d slices, or 2.5d slices with neighbours as channels",
    "sampling.foreground_fraction": "share of samples centred on a foreground voxel",
    "sampling.batch_size": "samples per training batch",
    "sampling.slice_filter.filters": "which slice filters apply",
    "model": "network: {name: <registered model>, parameters}; names below",
    "loss": "loss: {name: <registered loss>, parameters}; names below",
    "train": "optimiser, schedule, length and hardware of training",
    "train.optimizer": "{name: <registered optimiser>, lr, ...}",
    "train.schedule": "{name: <registered schedule>, ...}, or null for a constant rate",
    "train.epochs": "maximum number of epochs",
    "train.iterations_per_epoch": "batches per epoch",
    "train.val_every": "validate every N epochs (and after the last)",
    "train.seed": "seed of initialisation, sampling, augmentation and dropout",
    "train.device": "auto (GPU when present), cpu, cuda or cuda:N",
    "train.amp": "mixed precision on a GPU",
    "train.num_threads": "CPU threads for PyTorch (default: PyTorch's choice)",
    "train.grad_clip": "clip the gradient norm to this value (null: no clipping)",
    "infer": "how whole cases are predicted (validation and predict)",
    "infer.overlap": "sliding-window overlap between neighbouring patches (fraction)",
    "infer.batch_size": "patches or slices per forward pass",
    "infer.tta": "test-time augmentation by mirroring along the axes trained with flips",
    "infer.save_probabilities": "also write the class probabilities of validation predictions",
    "postprocess": "clean-up of predicted masks",
    "postprocess.fill_holes": "fill holes inside each label",
    "evaluate": "metrics, report and lesion rules",
    "evaluate.lesions.size_unit": "unit of the lesion size brackets",
}
PATTERNS: tuple[tuple[str, str], ...] = (
    (".p", "probability that a training sample gets this transform (0 = off)"),
    (".axes", "axes the transform may act on"),
    (".range", "range the transform's factor or offset is drawn from"),
    (".degrees", "largest rotation in degrees"),
    (".scale", "range of the scaling factor"),
    (".sigma", "range or value of the Gaussian sigma (voxels)"),
    (".magnitude", "displacement magnitude (voxels)"),
    (".std", "standard deviation of the added noise"),
)


def description(path: str, schema_text: str, sub: type[BaseModel] | None = None) -> str:
    """The schema's description, else this module's, else the sub-model's docstring."""
    if schema_text:
        return schema_text
    if path in DESCRIPTIONS:
        return DESCRIPTIONS[path]
    if path.startswith("augment."):
        if path.count(".") == 1:
            return f"the {path.split('.')[1]} augmentation"
        for suffix, text in PATTERNS:
            if path.endswith(suffix):
                return text
    return " ".join((sub.__doc__ or "").split()) if sub is not None else ""


def schema_rows(model: type[BaseModel], prefix: str = "") -> Iterator[tuple[str, str, str, str, type[BaseModel] | None]]:
    """(key path, type, default, description, sub-model) for every field, depth first."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        sub = _submodel(field.annotation)
        is_list = typing.get_origin(field.annotation) is list
        yield path, _type_name(field.annotation), _default(field), (field.description or "").strip(), sub
        if sub is not None:
            yield from schema_rows(sub, f"{path}[]." if is_list else f"{path}.")


def experiment_reference() -> str:
    """Markdown: every key of the experiment file."""
    from delineo.config import ExperimentConfig
    from delineo.registry import LOSSES, MODELS, OPTIMIZERS, SCHEDULES

    lines = [
        "# Experiment file reference",
        "",
        "Generated from the schema in `delineo/config.py` when the site is built. Every key of an",
        "experiment file (YAML or JSON), its type, its default and what it does. An unknown key or a",
        "wrong type stops loading with one sentence naming the key and the closest valid name; any",
        "key can be overridden on the command line, `--set train.epochs=3`.",
        "",
    ]
    section = None
    for path, type_name, default, schema_text, sub in schema_rows(ExperimentConfig):
        top = path.split(".")[0].split("[")[0]
        if top != section:
            section = top
            doc = (ExperimentConfig.model_fields[top].annotation.__doc__ or "") if sub is not None and "." not in path else ""
            lines += ["", f"## `{top}`", ""]
            if doc and "Usage docs" not in doc and sub is not None and not doc.startswith("!!!"):
                lines += [" ".join(doc.split()), ""]
            lines += ["| key | type | default | description |", "|---|---|---|---|"]
        desc = _cell(description(path, schema_text, sub))
        lines.append(f"| `{path}` | {_cell(type_name)} | {_cell(default)} | {desc} |")
    lines += ["", "## Components by name", "",
              "`model`, `loss`, `train.optimizer` and `train.schedule` are `{name: ..., parameters}`;",
              "the parameters are those of the registered builder (checked when the file is loaded).", ""]
    for title, registry in (("model", MODELS), ("loss", LOSSES), ("train.optimizer", OPTIMIZERS),
                            ("train.schedule", SCHEDULES)):
        lines.append(f"- `{title}`: " + ", ".join(f"`{n}`" for n in registry.names()))
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return text.replace("|", "\\|").replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;")


def _actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]


def _describe(action: argparse.Action) -> tuple[str, str]:
    if action.option_strings:
        name = ", ".join(f"`{o}`" for o in action.option_strings)
        if action.nargs != 0:
            name += f" `{action.metavar or action.dest.upper()}`"
    else:
        name = f"`{action.metavar or action.dest}`" + (" (optional)" if action.nargs in ("?", "*") else "")
    text = _cell(action.help or "").strip()
    if text and text[-1] not in ".)!?":
        text += "."
    if action.choices and not isinstance(action.choices, dict):
        text += f" Choices: {', '.join(f'`{c}`' for c in action.choices)}."
    if action.default not in (None, False, argparse.SUPPRESS, []) and action.option_strings and "default" not in text:
        text += f" Default: `{action.default}`."
    return name, text.strip()


def verb_parsers(parser: argparse.ArgumentParser | None = None) -> dict[str, argparse.ArgumentParser]:
    """Verb name -> its sub-parser, in the order ``delineo --help`` lists them."""
    from delineo.cli import build_parser

    parser = parser or build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices.items())


def cli_reference() -> str:
    """Markdown: every verb of ``delineo`` with its arguments."""
    from delineo.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {a.dest: a.help for a in sub._choices_actions}
    lines = ["# Command-line reference", "",
             "Generated from `delineo.cli.build_parser()` when the site is built. Every verb takes",
             "`--debug` (tracebacks) and `-q/--quiet`; a user error prints one sentence and exits with",
             "status 2, and nothing partial is written.", "", "| verb | what it does |", "|---|---|"]
    verbs = verb_parsers(parser)
    lines += [f"| [`{v}`](#{v}) | {helps.get(v, '')} |" for v in verbs]
    for verb, p in verbs.items():
        usage = " ".join(p.format_usage().split())
        lines += ["", f"## {verb}", "", helps.get(verb, "") or "", "", "```text", usage.replace("usage: ", ""), "```",
                  "", "| argument | meaning |", "|---|---|"]
        for action in _actions(p):
            if action.dest in ("debug", "quiet"):
                continue
            name, text = _describe(action)
            lines.append(f"| {name} | {text} |")
    return "\n".join(lines) + "\n"


def recipe_page(name: str) -> str:
    """The recipe's README (the single source), with a header pointing at its files."""
    from delineo.recipes import experiment_files, recipe_path

    text = (recipe_path(name) / "README.md").read_text()
    files = ", ".join(f"`{p.name}`" for p in experiment_files(name))
    note = (f"\n\n!!! note \"Recipe files\"\n    `delineo/recipes/{name}/`: {files}. "
            f"Get an editable copy with `delineo recipe copy {name} DEST`.\n")
    first_break = text.find("\n\n")
    return text[:first_break] + note + text[first_break:]

"""The README's snippets and claims agree with the shipped files: the abridged experiment equals
examples/hippocampus.yaml where it shows a value, `delineo plan` differs from that example only
where the README says, named example files exist, pyproject's package data matches real files,
and every option the README shows on `delineo predict` exists."""

from __future__ import annotations

import glob
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from delineo.config import load_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", README, flags=re.S)


def _subset(shown, actual, where: str) -> list[str]:
    """Places where the README shows a value the file (resolved) does not have."""
    if isinstance(shown, dict):
        if not isinstance(actual, dict):
            return [f"{where}: README shows a mapping, the file has {actual!r}"]
        out = []
        for k, v in shown.items():
            if k not in actual:
                out.append(f"{where}.{k}: not in the file")
            else:
                out += _subset(v, actual[k], f"{where}.{k}")
        return out
    if isinstance(shown, list) and isinstance(actual, list) and shown and isinstance(shown[0], dict):
        if len(shown) != len(actual):
            return [f"{where}: {len(shown)} items shown, {len(actual)} in the file"]
        return [e for i, (a, b) in enumerate(zip(shown, actual)) for e in _subset(a, b, f"{where}[{i}]")]
    return [] if shown == actual else [f"{where}: README {shown!r}, file {actual!r}"]


def test_abridged_example_matches_the_file():
    block = next(b for b in _yaml_blocks() if "examples/hippocampus.yaml (abridged)" in b)
    shown = yaml.safe_load(block)
    raw = yaml.safe_load((ROOT / "examples" / "hippocampus.yaml").read_text())
    resolved = load_config(ROOT / "examples" / "hippocampus.yaml").model_dump(mode="json")
    resolved["data"]["source"]["path"] = raw["data"]["source"]["path"]  # as written, not resolved
    problems = _subset(shown, resolved, "hippocampus")
    assert not problems, "\n".join(problems)


def test_plan_differs_from_the_example_only_where_the_readme_says(tmp_path: Path):
    from delineo.config import DataConfig
    from delineo.data.plan import plan_dataset

    data = DataConfig(source={"type": "msd", "path": str(ROOT / "delineo" / "sample_data" / "hippocampus")})
    path, _ = plan_dataset(data, tmp_path / "plan.yaml", "hippocampus", progress=False)

    def leaves(d, pre=""):
        if isinstance(d, dict):
            for k, v in d.items():
                yield from leaves(v, f"{pre}.{k}" if pre else k)
        else:
            yield pre, d

    a = dict(leaves(load_config(path).model_dump()))
    b = dict(leaves(load_config(ROOT / "examples" / "hippocampus.yaml").model_dump()))
    differ = {k for k in set(a) | set(b) if a.get(k) != b.get(k)} - {"data.source.path"}
    # poly's exponent: the example spells out the schedule's default (0.9)
    assert differ <= {"preprocess.crop_foreground", "infer.batch_size", "train.schedule.exponent"}, differ
    assert "crop_foreground" in differ.__repr__() and "crop_foreground: true" in README
    assert "it chooses exactly" not in README


def test_named_example_files_exist_and_load():
    names = set(re.findall(r"examples/([\w_]+\.yaml)", README))
    names |= set(re.findall(r"^- \*\*`([\w_]+\.yaml)`", README, flags=re.M))  # the published set-ups list
    assert "hippocampus.yaml" in names and len(names) >= 6, names
    for name in sorted(names):
        assert (ROOT / "examples" / name).is_file(), name


def test_package_data_globs_match_shipped_files():
    cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pkg = ROOT / "delineo"
    for pattern in cfg["tool"]["setuptools"]["package-data"]["delineo"]:
        assert glob.glob(str(pkg / pattern), recursive=True), f"package data '{pattern}' matches no file"
    shipped = {p.name for p in (pkg / "examples").glob("*.yaml")}
    assert shipped >= {p.name for p in (ROOT / "examples").glob("*.yaml")} and "hippocampus.yaml" in shipped
    deps = " ".join(cfg["project"]["dependencies"])
    for module in ("contourpy", "nibabel", "pydicom", "highdicom", "SimpleITK", "yaml"):
        assert module.lower() in deps.lower() or (module == "yaml" and "pyyaml" in deps), module


def test_readme_predict_options_exist():
    from delineo.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "verb")
    options = {o for a in sub.choices["predict"]._actions for o in a.option_strings}
    shown = set(re.findall(r"(--[a-z][a-z-]+)", "\n".join(l for l in README.splitlines() if "delineo predict" in l)))
    shown |= {"--with-patient-data"} if "--with-patient-data" in README else set()
    missing = shown - options
    assert not missing, missing
    assert "--with-patient-data" in options and "--with-patient-data" in README

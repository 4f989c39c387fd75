"""Recipes: the published set-ups as folders that ship inside the package.

Each recipe is a folder ``delineo/recipes/<name>/`` with a ``README.md`` (what the original
did, what its authors reported, what Delineo gets here) and its experiment files (``*.yaml``).
Data paths in the experiment files are relative to the folder and point at the embedded
samples, so ``delineo train $(delineo recipe path wmh)/experiment.yaml`` runs from any folder;
:func:`copy_recipe` writes an editable copy whose data paths are made absolute.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from delineo.errors import InputError

RECIPES_DIR = Path(__file__).resolve().parent


def list_recipes() -> list[str]:
    """Names of the recipe folders (those with a README.md)."""
    return sorted(p.name for p in RECIPES_DIR.iterdir() if p.is_dir() and (p / "README.md").is_file())


def recipe_path(name: str) -> Path:
    """The folder of recipe ``name``; one sentence naming the known recipes when it does not exist."""
    from delineo.registry import closest

    known = list_recipes()
    if name not in known:
        raise InputError(f"unknown recipe '{name}'{closest(name, known)}; known: {', '.join(known)}.")
    return RECIPES_DIR / name


def experiment_files(name: str) -> list[Path]:
    """The experiment files of a recipe (every ``*.yaml`` except pipeline files)."""
    return sorted(p for p in recipe_path(name).glob("*.yaml") if not p.name.startswith("pipeline"))


def summary(name: str) -> str:
    """The first paragraph after the title of the recipe's README."""
    lines = (recipe_path(name) / "README.md").read_text().splitlines()
    body, started = [], False
    for line in lines[1:]:
        if line.strip():
            started = True
            body.append(line.strip())
        elif started:
            break
    return " ".join(body)


def copy_recipe(name: str, dest: str | Path) -> Path:
    """Copy recipe ``name`` into ``dest`` (a new folder) with absolute data paths, so the copy
    trains on the embedded sample until it is pointed at real data."""
    src, dest = recipe_path(name), Path(dest)
    if dest.exists() and any(dest.iterdir()):
        raise InputError(f"{dest}: already exists and is not empty; choose a new folder.")
    tmp = dest.with_name(f".{dest.name}.partial")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("__pycache__"))
    for path in tmp.glob("*.yaml"):
        text = path.read_text()
        data = yaml.safe_load(text) or {}
        source = (data.get("data") or {}).get("source") or {}
        rel = source.get("path")
        if rel and not Path(rel).is_absolute():
            absolute = (src / rel).resolve()
            path.write_text(text.replace(f"path: {rel}", f"path: {absolute}", 1))
    if dest.exists():
        dest.rmdir()
    tmp.rename(dest)
    return dest

"""Patient-level k-fold splits, seeded and optionally stratified by a group, saved to
``splits.json`` and reused so that every fold of an experiment sees the same partition.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Optional, Sequence

from delineo.data.sources import Case
from delineo.errors import InputError
from delineo.io.atomic import write_text_atomic


def make_splits(cases: list[Case], folds: int, seed: int = 0, stratify: bool = True,
                test_fraction: float = 0.0, val_fraction: Optional[float] = None,
                test_folds: Sequence[int] = ()) -> dict:
    """``{"test": [...], "folds": [{"train": [...], "val": [...]}, ...]}`` of case ids.

    Patients (not cases) are assigned to folds; with groups, each group is dealt round-robin
    over the folds so that every fold has the same mix. Predefined folds (HDF5) are kept.
    """
    rng = random.Random(seed)
    patients: dict[str, list[str]] = defaultdict(list)
    group_of: dict[str, str] = {}
    predefined: dict[str, int] = {}
    for c in cases:
        patients[c.patient].append(c.case_id)
        group_of[c.patient] = c.group or ""
        if c.fold is not None:
            predefined[c.patient] = c.fold
    order = sorted(patients)
    rng.shuffle(order)
    test: list[str] = []
    if test_folds:  # predefined test groups (deoxys HDF5): out of every fold, the others renumbered 0..
        if not predefined or len(predefined) != len(patients):
            raise InputError("data.test_folds needs predefined folds (an HDF5 source in the deoxys layout).")
        missing = sorted(set(test_folds) - set(predefined.values()))
        if missing:
            raise InputError(f"data.test_folds: no fold group {missing[0]} (groups {sorted(set(predefined.values()))}).")
        test = sorted(cid for p in order if predefined[p] in test_folds for cid in patients[p])
        order = [p for p in order if predefined[p] not in test_folds]
        kept = sorted(set(predefined[p] for p in order))
        predefined = {p: kept.index(predefined[p]) for p in order}
        patients = {p: patients[p] for p in order}
    if test_fraction > 0:
        n_test = max(1, round(len(order) * test_fraction))
        test_patients, order = order[:n_test], order[n_test:]
        test = sorted(cid for p in test_patients for cid in patients[p])
    if val_fraction:
        return holdout_split(patients, order, val_fraction, seed, test)
    if len(order) < folds:
        raise InputError(f"{folds} folds need at least {folds} patients, the dataset has {len(order)}.")
    assign: dict[str, int] = {}
    if predefined and len(predefined) == len(patients):
        n_pre = max(predefined.values()) + 1
        folds = n_pre
        assign = {p: predefined[p] for p in order}
    else:
        by_group: dict[str, list[str]] = defaultdict(list)
        for p in order:
            by_group[group_of[p] if stratify else ""].append(p)
        i = 0
        for g in sorted(by_group):
            for p in by_group[g]:
                assign[p] = i % folds
                i += 1
    result = {"seed": seed, "test": test, "folds": []}
    for k in range(folds):
        val = sorted(cid for p in order if assign[p] == k for cid in patients[p])
        train = sorted(cid for p in order if assign[p] != k for cid in patients[p])
        result["folds"].append({"train": train, "val": val})
    return result


def holdout_split(patients: dict[str, list[str]], order: list[str], val_fraction: float, seed: int,
                  test: list[str]) -> dict:
    """One split (fold 0) of the shuffled patients: round(fraction x patients), at least one and
    at most all but one, validate; a patient's cases stay on one side (the 80/20 splitter of the
    brain-tumour pipeline, grouped by patient)."""
    if len(order) < 2:
        raise InputError(f"a {1 - val_fraction:.0%}/{val_fraction:.0%} split needs at least 2 patients, "
                         f"the dataset has {len(order)}.")
    n_val = min(len(order) - 1, max(1, round(len(order) * val_fraction)))
    val_patients = set(order[:n_val])
    val = sorted(cid for p in order if p in val_patients for cid in patients[p])
    train = sorted(cid for p in order if p not in val_patients for cid in patients[p])
    return {"seed": seed, "test": test, "folds": [{"train": train, "val": val}]}


def load_or_make_splits(path: Path, cases: list[Case], folds: int, seed: int, stratify: bool,
                        test_fraction: float, val_fraction: Optional[float] = None,
                        test_folds: Sequence[int] = ()) -> dict:
    """Reuse ``path`` when it exists and covers exactly these cases; write it otherwise."""
    ids = {c.case_id for c in cases}
    if path.is_file():
        splits = json.loads(path.read_text())
        known = set(splits["test"]) | {cid for f in splits["folds"] for cid in f["val"]}
        if known == ids:
            return splits
        raise InputError(
            f"{path}: the saved splits do not match the dataset's cases "
            f"({len(known ^ ids)} differ); delete it to make new splits."
        )
    splits = make_splits(cases, folds, seed, stratify, test_fraction, val_fraction, test_folds)
    write_text_atomic(path, json.dumps(splits, indent=1))
    return splits


def fold_cases(splits: dict, fold: Optional[int]) -> tuple[list[str], list[str]]:
    """(train ids, validation ids) for ``fold``; ``None`` trains on everything but the test set."""
    if fold is None:
        everything = sorted({cid for f in splits["folds"] for cid in f["val"]})
        return everything, []
    if not 0 <= fold < len(splits["folds"]):
        raise InputError(f"fold {fold} does not exist (0..{len(splits['folds']) - 1}).")
    f = splits["folds"][fold]
    return f["train"], f["val"]

"""Benchmark: budgeted plans trained as a new user would, on four kinds of data, and whether each
trains within its budget.

    nice -n 19 python benchmarks/plans_trained.py [--minutes 5] [--work DIR] [--only NAME,...]

For each dataset: ``delineo plan DATASET --budget Bm --out plan.yaml`` (timed), then
``delineo train plan.yaml --fold 0 --no-evaluate`` (wall clock and peak resident set size of the
process, measured with ``os.wait4``), then ``delineo evaluate RUN`` (timed separately, so that the
training's own time is not mixed with the report's). The datasets:

* ``hippocampus``: ``../shared/data/hippocampus`` (MSD Task04, 208 cases, isotropic 1 mm MR);
* ``brain-tumour-pgbm``: ``../shared/data/brain-tumour-pgbm`` (5 studies of 3 patients, 0.43 or
  0.69 mm in plane, 6.5 mm slices, three channels), split by patient
  (``data.source.patient_pattern``, as the recipe does: two studies of one patient must not fall
  on both sides of the split);
* ``ct-liver``: the embedded abdominal CTs with liver masks (``delineo/sample_data/ct_liver``,
  3 cases: the shared ``ct-abdomen`` folder holds a single CT, which cannot be split);
* ``hippocampus-4mm``: a copy of the hippocampus data resampled to 1 x 1 x 4 mm
  (:func:`thick_slices`: each four slices averaged into one, as a thick acquisition integrates
  them; the label is each block's majority), written under ``--work``.

The table gives, per dataset, the plan (2D/3D, target spacing, patch, batch, filters,
precision), the budget, the train command's wall time split into its setup (reading, resampling,
caching; ``preprocessing ready in`` of the log), the epochs the trainer counts against the budget
(the sum of ``log.csv``'s ``seconds``, validations included) and the rest (model building, the
precision probe, the last checkpoint); the iterations done against the steps the plan's probe
expected; the best validation Dice of ``log.csv``; the peak RSS of the train command.

The verdict ``within`` holds when the trainer's counted time stays inside the budget plus the
final validation (which starts when the budget is spent) and one step. On a shared CPU the
wall clock is shared: fewer iterations than planned means other users had the cores, not that
the plan was wrong (the probe measures CPU seconds per thread for that reason; log.csv's
cpu_seconds against seconds gives the share of the machine a run had).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
log = logging.getLogger("plans_trained")
DELINEO = [sys.executable, "-c", "import sys; from delineo.cli import main; sys.exit(main())"]
#: overrides a dataset needs to be split honestly (patients, not studies)
OVERRIDES = {"brain-tumour-pgbm": [r"data.source.patient_pattern=^(.*?)(?:_\d{8})?$", "data.folds=3"]}


# ------------------------------------------------------------------------- data (tested)
def thick_slices(image: np.ndarray, label: np.ndarray, factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """``image`` and ``label`` with every ``factor`` slices of the last axis made into one: the image
    the block mean (partial volume, as a thick slice records), the label the block's majority
    (ties to the lower label). A last, incomplete block is averaged over the slices it has."""
    z = image.shape[-1]
    n = -(-z // factor)
    out = np.empty(image.shape[:-1] + (n,), dtype=np.float32)
    lab = np.empty(label.shape[:-1] + (n,), dtype=label.dtype)
    values = np.unique(label)
    for k in range(n):
        block = slice(k * factor, min(z, (k + 1) * factor))
        out[..., k] = image[..., block].astype(np.float64).mean(axis=-1)
        counts = np.stack([(label[..., block] == v).sum(axis=-1) for v in values])
        lab[..., k] = values[np.argmax(counts, axis=0)]
    return out, lab


def thick_affine(affine: np.ndarray, factor: int = 4) -> np.ndarray:
    """The affine of :func:`thick_slices`' grid: the last axis ``factor`` x longer, its first voxel
    centred where the first block's slices are centred."""
    a = np.array(affine, dtype=float)
    a[:3, 3] = a[:3, 3] + a[:3, 2] * (factor - 1) / 2
    a[:3, 2] = a[:3, 2] * factor
    return a


def anisotropic_copy(src: Path, dst: Path, factor: int = 4) -> Path:
    """An MSD copy of ``src`` (single channel: ``imagesTr/CASE.nii.gz`` or ``CASE_0000.nii.gz``)
    with thick slices."""
    import nibabel as nib

    if (dst / "dataset.json").is_file():
        return dst
    tmp = dst.with_name(dst.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "imagesTr").mkdir(parents=True)
    (tmp / "labelsTr").mkdir()
    for lab_path in sorted((src / "labelsTr").glob("*.nii.gz")):
        if lab_path.name.startswith("."):
            continue
        case = lab_path.name[: -len(".nii.gz")]
        img_path = src / "imagesTr" / f"{case}_0000.nii.gz"
        img = nib.load(img_path if img_path.is_file() else src / "imagesTr" / lab_path.name)
        lab = nib.load(lab_path)
        image, label = thick_slices(np.asarray(img.dataobj), np.asarray(lab.dataobj).astype(np.uint8), factor)
        affine = thick_affine(img.affine, factor)
        nib.save(nib.Nifti1Image(image, affine), tmp / "imagesTr" / f"{case}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, affine), tmp / "labelsTr" / f"{case}.nii.gz")
    meta = json.loads((src / "dataset.json").read_text())
    meta["description"] = f"{meta.get('description', '')} Resampled to {factor}x thicker slices by plans_trained.py."
    (tmp / "dataset.json").write_text(json.dumps(meta, indent=1))
    os.replace(tmp, dst)
    return dst


# ------------------------------------------------------------------- measuring (tested)
@dataclass
class Measured:
    output: str
    wall_s: float
    peak_mb: float
    rc: int
    cpu_s: float = 0.0  # user + system seconds of the process and its children


def run_measured(cmd: Sequence[str], env: Optional[dict[str, str]] = None) -> Measured:
    """Run ``cmd``: its output, wall seconds, peak RSS (MB, the process and its children) and exit code."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdout=out, stderr=subprocess.STDOUT, text=True, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        return Measured(out.read(), wall, usage.ru_maxrss / 1024, proc.returncode, usage.ru_utime + usage.ru_stime)


@dataclass
class TrainFigures:
    epochs: int = 0
    iterations: int = 0
    counted_s: float = 0.0  # what the trainer counts against the budget (log.csv seconds)
    last_validation_s: float = 0.0  # the last epoch's seconds beyond its training steps
    step_s: float = 0.0  # mean seconds of one step (net + data)
    best_dice: float = float("nan")
    last_dice: float = float("nan")
    setup_s: Optional[float] = None  # "preprocessing ready in"
    extra: dict[str, Any] = field(default_factory=dict)


def read_run(run_dir: Path, output: str = "") -> TrainFigures:
    """The figures of one training run from its ``log.csv`` and the command's log lines."""
    f = TrainFigures()
    with open(run_dir / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    f.epochs = len(rows)
    its = [int(float(r["iterations"])) for r in rows]
    f.iterations = sum(its)
    f.counted_s = sum(float(r["seconds"]) for r in rows)
    busy = sum(float(r["net_seconds"]) + float(r["data_seconds"]) for r in rows)
    f.step_s = busy / max(f.iterations, 1)
    last = rows[-1]
    f.last_validation_s = float(last["seconds"]) - float(last["net_seconds"]) - float(last["data_seconds"])
    dices = [float(r["val_dice"]) for r in rows if r.get("val_dice") not in (None, "")]
    if dices:
        f.best_dice, f.last_dice = max(dices), dices[-1]
    m = re.search(r"preprocessing ready in ([0-9.]+) s", output)
    f.setup_s = float(m.group(1)) if m else None
    return f


def within_budget(fig: TrainFigures, budget_s: float) -> bool:
    """The trainer stops at the budget; the last validation starts when it is spent, and the last
    step may end just after it. Anything more is an overshoot."""
    return fig.counted_s <= budget_s + fig.last_validation_s + 2 * fig.step_s + 1.0


def plan_summary(plan: dict[str, Any]) -> str:
    s, p = plan["sampling"], plan["preprocess"]
    spacing = "x".join(f"{v:g}" for v in p["spacing"]) + " mm" if p.get("spacing") else "as is"
    patch = "x".join(str(v) for v in s["patch_size"])
    f = plan["model"]["filters"]
    return (f"{s['mode'].upper()}, {spacing}, patch {patch}, batch {s['batch_size']}, "
            f"filters {f[0]}-{f[-1]} ({len(f)} levels), {plan['train'].get('precision', 'fp32')}")


def planned_steps(plan_text: str) -> Optional[int]:
    m = re.search(r"leaves (\d+) >= \d+ steps|\(([0-9.]+) s/step, (\d+) steps\)", plan_text)
    if not m:
        return None
    return int(m.group(1) or m.group(3))


def markdown_table(rows: list[dict[str, Any]]) -> str:
    head = ["dataset", "plan", "plan command", "budget", "train command: wall (CPU)", "setup", "epochs counted",
            "after", "within", "iterations (planned)", "val Dice (best)", "peak RSS", "evaluate"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['dataset']} | {r['error']} |" + " |" * (len(head) - 2))
            continue
        setup = f"{r['setup_s']:.0f} s" if r.get("setup_s") is not None else "?"
        lines.append("| " + " | ".join([
            r["dataset"], r["plan"], f"{r['plan_s']:.0f} s", f"{r['budget_s'] / 60:g} min",
            f"{r['wall_s']:.0f} s (CPU {r['cpu_s']:.0f} s)", setup,
            f"{r['counted_s']:.0f} s (last validation {r['last_validation_s']:.0f} s)", f"{r['after_s']:.0f} s",
            "yes" if r["within"] else "**no**", f"{r['iterations']} ({r['planned'] if r['planned'] else '?'})",
            f"{r['best_dice']:.3f}", f"{r['peak_mb']:.0f} MB",
            f"{r['evaluate_s']:.0f} s" if r.get("evaluate_s") is not None else "not run",
        ]) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the run
def datasets(work: Path) -> dict[str, Path]:
    return {
        "hippocampus": SHARED / "hippocampus",
        "brain-tumour-pgbm": SHARED / "brain-tumour-pgbm",
        "ct-liver": ROOT / "delineo" / "sample_data" / "ct_liver",
        "hippocampus-4mm": work / "data" / "hippocampus-4mm",
    }


def bench(name: str, data: Path, work: Path, minutes: float, evaluate: bool = False) -> dict[str, Any]:
    import yaml

    out = work / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    env = {**os.environ, "TQDM_DISABLE": "1"}
    plan_path = out / "plan.yaml"
    planned = run_measured([*DELINEO, "plan", str(data), "--budget", f"{minutes:g}m", "--out", str(plan_path),
                            "--name", name], env)
    if planned.rc:
        raise RuntimeError(f"delineo plan failed: {planned.output.strip().splitlines()[-1]}")
    text = plan_path.read_text()
    plan = yaml.safe_load(text)
    log.info("%s: planned in %.1f s: %s", name, planned.wall_s, plan_summary(plan))
    sets = [a for o in OVERRIDES.get(name, []) for a in ("--set", o)]
    trained = run_measured([*DELINEO, "train", str(plan_path), "--fold", "0", "--runs", str(out / "runs"),
                            "--no-evaluate", "--db", "off", *sets], env)
    (out / "train.log").write_text(trained.output)
    if trained.rc:
        raise RuntimeError(f"delineo train failed: {trained.output.strip().splitlines()[-1]}")
    run_dir = out / "runs" / name / "fold_0"
    fig = read_run(run_dir, trained.output)
    evaluated = run_measured([*DELINEO, "evaluate", str(run_dir), "-q"], env) if evaluate else None
    budget_s = minutes * 60
    row = {"dataset": name, "plan": plan_summary(plan), "budget_s": budget_s, "plan_s": planned.wall_s,
           "wall_s": trained.wall_s, "cpu_s": trained.cpu_s, "setup_s": fig.setup_s, "counted_s": fig.counted_s,
           "last_validation_s": fig.last_validation_s,
           "after_s": trained.wall_s - fig.counted_s - (fig.setup_s or 0.0), "within": within_budget(fig, budget_s),
           "iterations": fig.iterations, "epochs": fig.epochs, "planned": planned_steps(text),
           "step_s": fig.step_s, "best_dice": fig.best_dice, "last_dice": fig.last_dice,
           "peak_mb": trained.peak_mb, "evaluate_s": evaluated.wall_s if evaluated else None}
    log.info("%s: %s", name, json.dumps(row))
    return row


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=5.0, help="the budget of every plan (default 5)")
    ap.add_argument("--work", type=Path, default=Path("/tmp/delineo_plans_trained"), help="output folder")
    ap.add_argument("--only", default=None, help="comma-separated dataset names")
    ap.add_argument("--evaluate", action="store_true", help="also time `delineo evaluate RUN` after training")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    args.work.mkdir(parents=True, exist_ok=True)
    sets = datasets(args.work)
    names = args.only.split(",") if args.only else list(sets)
    unknown = [n for n in names if n not in sets]
    if unknown:
        raise SystemExit(f"--only: no dataset {unknown[0]!r} (known: {', '.join(sets)}).")
    if "hippocampus-4mm" in names:
        anisotropic_copy(SHARED / "hippocampus", sets["hippocampus-4mm"])
    load_before = os.getloadavg()
    rows = []
    for n in names:
        try:
            rows.append(bench(n, sets[n], args.work, args.minutes, args.evaluate))
        except RuntimeError as exc:  # one dataset's failure is a row of the table, not the end of the run
            log.error("%s: %s", n, exc)
            rows.append({"dataset": n, "error": str(exc), "within": False})
        (args.work / "rows.json").write_text(json.dumps(rows, indent=1))
    load_after = os.getloadavg()
    print(markdown_table(rows))
    print(f"\nLoad average (1, 5, 15 min) before {', '.join(f'{v:.1f}' for v in load_before)}, after "
          f"{', '.join(f'{v:.1f}' for v in load_after)}; {os.cpu_count()} CPUs; torch threads as planned.")
    return 0 if all(r["within"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

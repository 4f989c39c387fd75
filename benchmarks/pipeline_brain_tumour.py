"""Benchmark: the brain_tumour recipe's 2D tumour model as a pipeline, with and without the
post-processing chosen on validation data, on a patient nobody trained or searched on.

    nice -n 19 python benchmarks/pipeline_brain_tumour.py [--minutes 15] [--folds 1] [--skip-train]
                                                          [--set KEY=VALUE ...]

Data: ``../shared/data/brain-tumour-pgbm`` (5 studies of 3 patients; T1post, FLAIR, T2; 6.5 mm
slices, hence 2D). Split by patient (seed 0): one patient (pgbm003, 2 studies) is the test set
(``data.test_fraction``); the other two form a 2-fold patient-level cross-validation, each fold
training on one patient and validating on the other. By default only fold 1 is trained (on
pgbm008's 2 studies, validated on pgbm006's one) with the whole budget; ``--folds 0,1`` trains
both folds, sharing the budget ``--minutes``, and assembles them as an ensemble.
``delineo pipeline build`` then assembles two models from the trained folds:

* ``plain.delineo``: a ``segment`` stage (the folds' mean probability), nothing else;
* ``post.delineo``: the same plus a ``postprocess`` stage whose probability threshold and
  connected-component steps are searched on the folds' out-of-fold studies (each predicted by
  the fold that did not train on it) and kept only if they raise the mean per-study Dice (the
  nnU-Net rule).

Each model is scored on each test study by ``delineo evaluate MODEL DATASET --cases ID`` in its
own process (seconds per study as the command measures it, peak memory as that process's peak
resident set size, which includes Python and PyTorch); Dice, HD95, volumes and lesion recall /
precision (:mod:`delineo.evaluate.lesions`, full connectivity) are computed here from the
written predictions. Prints the per-study table, the folds' training figures and the table of
what each post-processing candidate did on the validation studies (also in ``delineo info``).

With three patients, one test patient decides the figures: they show what the pieces do on real
data, not the recipe's accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("pipeline_brain_tumour")

#: What this benchmark changes in the recipe: the split (one test patient, 2 folds over the other
#: two), and a size for a shared 2-core CPU: 2 mm in plane (tumours of 2-19 ml stay 10-30 pixels
#: wide) with 64 x 64 patches (a 128 mm field of view), batch 8, one thread (two threads at low
#: priority on an overloaded CPU mostly wait for each other), validation every second epoch.
SETUP = ["data.val_fraction=null", "data.test_fraction=0.34", "data.folds=2", "preprocess.spacing=[2.0,2.0,6.5]",
         "sampling.patch_size=[64,64]", "sampling.batch_size=8", "train.iterations_per_epoch=25",
         "train.val_every=2", "train.num_threads=1", "train.device=cpu"]
DELINEO = [sys.executable, "-c", "import sys; from delineo.cli import main; sys.exit(main())"]
LEARNS = 0.3  # a fold whose best validation Dice stays under this has not learnt the task


# --------------------------------------------------------------------------- scoring (tested)
def study_row(study: str, pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float],
              seconds: Optional[float] = None, peak_mb: Optional[float] = None) -> dict[str, Any]:
    """Dice, HD95, volumes and lesion counts of one binary tumour prediction against its reference
    (delineo's metric and lesion conventions: an empty side gives None where undefined)."""
    from delineo.evaluate.lesions import LesionRules, score_lesions
    from delineo.evaluate.metrics import score_binary

    pred, ref = np.asarray(pred) > 0, np.asarray(ref) > 0
    s = score_binary(pred, ref, spacing)
    les, _ = score_lesions(pred, ref, spacing, LesionRules())
    return {"study": study, "dice": s["dice"], "hd95": s["hd95"], "lesions_ref": les["lesion_n_ref"],
            "lesions_pred": les["lesion_n_pred"], "lesion_recall": les["lesion_recall"],
            "lesion_precision": les["lesion_precision"], "volume_pred_ml": s["volume_pred_ml"],
            "volume_ref_ml": s["volume_ref_ml"], "seconds": seconds, "peak_mb": peak_mb}


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return f"{float(v):.{digits}f}"


def _mean(values: Sequence[Any]) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def comparison_table(rows: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown table: one line per model and study, then each model's mean over its studies
    (undefined values, e.g. HD95 with an empty prediction, left out of the mean and shown as -)."""
    head = ("| model | study | Dice | HD95 mm | lesions ref / pred | lesion recall | lesion precision "
            "| volume pred / ref ml | s per study | peak MB |")
    lines = [head, "|---|---|---|---|---|---|---|---|---|---|"]
    for model, studies in rows.items():
        for r in [*studies, {"study": "**mean**", **{k: _mean([s[k] for s in studies]) for k in
                                                      ("dice", "hd95", "lesion_recall", "lesion_precision",
                                                       "volume_pred_ml", "volume_ref_ml", "seconds", "peak_mb")},
                             "lesions_ref": sum(s["lesions_ref"] for s in studies),
                             "lesions_pred": sum(s["lesions_pred"] for s in studies)}]:
            lines.append(f"| {model} | {r['study']} | {_fmt(r['dice'])} | {_fmt(r['hd95'], 1)} | "
                         f"{_fmt(r['lesions_ref'])} / {_fmt(r['lesions_pred'])} | {_fmt(r['lesion_recall'], 2)} | "
                         f"{_fmt(r['lesion_precision'], 2)} | {_fmt(r['volume_pred_ml'], 2)} / "
                         f"{_fmt(r['volume_ref_ml'], 2)} | {_fmt(r['seconds'], 2)} | {_fmt(r['peak_mb'], 0)} |")
    return "\n".join(lines)


def search_table(tables: dict[str, Any], labels: dict[int, str]) -> str:
    """Markdown table of the post-processing search a build stored (``Pipeline.tables``): every
    threshold and every step tried, its mean validation Dice, and whether it was kept."""
    lines = ["| search | tried | mean validation Dice | kept |", "|---|---|---|---|"]
    for key, table in tables.items():
        kind = key.rsplit(".", 1)[-1]
        for row in table:
            name = labels.get(int(row["label"]), row["label"])
            if kind == "thresholds":
                t = row["threshold"]
                tried = "arg-max" if t == "arg-max" else f"threshold {t:g}"
                lines.append(f"| {name} threshold | {tried} | {row['dice']:.4f} | |")
            elif kind == "steps":
                lines.append(f"| {name} step | {row['step']} | {row['dice']:.4f} | "
                             f"{'yes' if row['kept'] else 'no'} |")
    return "\n".join(lines)


def chosen_thresholds(tables: dict[str, Any]) -> dict[int, Any]:
    """The threshold each label ended with: the best-scoring tried one, if it beat arg-max."""
    out: dict[int, Any] = {}
    for key, table in tables.items():
        if key.endswith(".thresholds"):
            for v in {int(r["label"]) for r in table}:
                rows = [r for r in table if int(r["label"]) == v]
                base = rows[0]["dice"]
                best = max(rows[1:], key=lambda r: r["dice"], default=None)
                out[v] = best["threshold"] if best and best["dice"] > base + 1e-4 else "arg-max"
    return out


# --------------------------------------------------------------------------- the run
def fold_summary(run: Path) -> dict[str, Any]:
    """Epochs, iterations, the training loss of the first tenth of epoch 0 and of the last epoch and the best validation Dice of a run."""
    rows = list(csv.DictReader(open(run / "log.csv")))
    dice_key = next((k for k in rows[0] if k.startswith("val_dice")), None) if rows else None
    vals = [float(r[dice_key]) for r in rows if dice_key and r.get(dice_key) not in ("", None)]
    losses = [float(r["train_loss"]) for r in rows if r.get("train_loss")]
    first = float(rows[0]["train_loss_start"]) if rows and rows[0].get("train_loss_start") else None
    iters = sum(int(r.get("iterations") or 0) for r in rows)
    secs = sum(float(r.get("net_seconds") or 0) + float(r.get("data_seconds") or 0) for r in rows)
    return {"epochs": len(rows), "iterations": iters, "s_per_iter": secs / max(iters, 1),
            "loss_first": first, "loss_last": losses[-1] if losses else None,
            "best_val_dice": max(vals) if vals else None}


def run_measured(cmd: list[str]) -> tuple[str, float]:
    """Run a command; (its output, its peak resident set size in MB)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd[3:])} failed ({proc.returncode}):\n{out[-3000:]}")
    return out, usage.ru_maxrss / 1024


def evaluate_study(model: Path, data: Path, cid: str, out: Path) -> tuple[dict[str, Any], float]:
    """`delineo evaluate MODEL DATASET --cases CID` in its own process: (study_row of the written
    prediction, peak RSS MB); its metrics (cases.csv, lesions.csv) stay under ``out/metrics``."""
    import nibabel as nib

    _, peak = run_measured([*DELINEO, "-q", "evaluate", str(model), str(data), "--cases", cid, "--out", str(out)])
    seconds = json.loads((out / "metrics" / "summary.json").read_text())["seconds_per_case"]
    pred_img = nib.load(out / "predictions" / f"{cid}.nii.gz")
    ref_img = nib.load(data / "labelsTr" / f"{cid}.nii.gz")
    spacing = tuple(float(z) for z in ref_img.header.get_zooms()[:3])
    row = study_row(cid, np.asarray(pred_img.dataobj), np.asarray(ref_img.dataobj) == 1, spacing, seconds, peak)
    return row, peak


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brain-tumour-pgbm")
    ap.add_argument("--minutes", type=float, default=15.0, help="training budget for all folds together")
    ap.add_argument("--folds", default="1", help="folds to train and assemble, of the 2-fold split of the two "
                    "development patients (1: trains on pgbm008, searches on pgbm006; 0,1: both, an ensemble "
                    "searched on all three development studies)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "pipeline_brain_tumour")
    ap.add_argument("--skip-train", action="store_true", help="train nothing (runs holding a model are always reused)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    import nibabel as nib
    import yaml

    from delineo.config import load_config
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.recipes import recipe_path
    from delineo.train.loop import train

    folds = [int(f) for f in args.folds.split(",") if f.strip()]
    cfg = load_config(recipe_path("brain_tumour") / "experiment.yaml",
                      [f"data.source.path={args.data.resolve()}", *SETUP,
                       f"train.max_minutes={args.minutes / len(folds)}", *args.overrides])
    runs = args.out / "runs"
    exp = runs / cfg.name
    t0 = time.perf_counter()
    for k in folds:
        if not args.skip_train and not (exp / f"fold_{k}" / "checkpoints" / "best.pt").is_file():
            train(cfg, runs, k, progress=False)
    t_train = time.perf_counter() - t0
    splits = json.loads((exp / "splits.json").read_text())
    test_ids = splits["test"]
    fold_info = {k: fold_summary(exp / f"fold_{k}") for k in folds}

    members = [str((exp / f"fold_{k}").resolve()) for k in folds]
    specs = {"plain": [{"name": "tumour", "kind": "segment", "runs": members}],
             "post": [{"name": "tumour", "kind": "segment", "runs": members},
                      {"name": "clean", "kind": "postprocess", "threshold": "search", "steps": "search"}]}
    models: dict[str, Path] = {}
    build_s: dict[str, float] = {}
    for name, stages in specs.items():
        spec = args.out / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": f"brain_tumour_{name}", "stages": stages}))
        models[name] = args.out / f"{name}.delineo"
        t1 = time.perf_counter()
        run_measured([*DELINEO, "-q", "pipeline", "build", str(spec), "--out", str(models[name]), "--device", "cpu"])
        build_s[name] = time.perf_counter() - t1
    info, _ = run_measured([*DELINEO, "info", str(models["post"])])

    rows: dict[str, list[dict[str, Any]]] = {}
    titles = {"plain": "without post-processing", "post": "with chosen post-processing"}
    for name, model in models.items():
        for cid in test_ids:
            row, _ = evaluate_study(model, args.data, cid, args.out / f"eval_{name}_{cid}")
            rows.setdefault(titles[name], []).append(row)

    post = Pipeline.load(models["post"], "cpu")
    print(f"\n== brain-tumour-pgbm, 2D tumour model {'+'.join(f'fold {k}' for k in folds)}; test patient "
          f"{', '.join(sorted({c.split('_')[0] for c in test_ids}))} ({len(test_ids)} studies)")
    print("split: " + "; ".join(f"fold {k} trains {', '.join(splits['folds'][k]['train'])}, validates "
                                f"{', '.join(splits['folds'][k]['val'])}" for k in folds))
    for k, f in fold_info.items():
        print(f"fold {k}: {f['epochs']} epochs, {f['iterations']} iterations ({f['s_per_iter']:.2f} s each), "
              f"training loss {_fmt(f['loss_first'])} -> {_fmt(f['loss_last'])}, best validation Dice "
              f"{_fmt(f['best_val_dice'])}" + ("" if (f["best_val_dice"] or 0) >= LEARNS else
                                                 f"  ** under {LEARNS}: this fold has not learnt the task **"))
    print(f"training {t_train / 60:.1f} min wall (budget {args.minutes:g} min); builds "
          + ", ".join(f"{n} {s:.0f} s" for n, s in build_s.items()))
    print("\n" + comparison_table(rows))
    print("\npost-processing searched on the out-of-fold validation studies "
          f"({', '.join(sorted(c for k in folds for c in splits['folds'][k]['val']))}):")
    print(search_table(post.tables, post.labels))
    print("\n`delineo info post.delineo`:\n" + info.rstrip())
    return 0


if __name__ == "__main__":
    sys.exit(main())

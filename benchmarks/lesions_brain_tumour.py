"""Benchmark: lesion-wise evaluation of the brain_tumour 2D model trained without and with the
entropy training-slice filter (``sampling.slice_filter``), on a patient nobody trained on.

    nice -n 19 python benchmarks/lesions_brain_tumour.py [--minutes 6] [--margin 0.25] [--skip-train]

Data: ``../shared/data/brain-tumour-pgbm`` with the split and CPU set-up of
``benchmarks/pipeline_brain_tumour.py`` (imported, not copied): test patient pgbm003 (2 studies),
fold 1 trains on pgbm008 (2 studies) and validates on pgbm006 (1 study); 2 x 2 x 6.5 mm, 64 x 64
patches, batch 8, one thread, same seed. Two models are trained *at the same time*, each in its
own process on one thread with the same budget ``--minutes``:

* ``without``: every training slice may be drawn (the recipe as is);
* ``with``: ``sampling.slice_filter: {filters: [entropy]}`` with a threshold chosen from the
  training studies' entropy profiles (:func:`delineo.evaluate.inspect.inspect_dataset`, the
  profile ``delineo inspect`` plots) by a stated rule, :func:`choose_threshold`: the lowest
  entropy of a training slice holding tumour, minus ``--margin`` bits (the sampler measures the
  resampled 2 mm slices, whose entropy differs a little from the original's), rounded down to
  0.05 bit. It drops the low-entropy slices below every tumour slice and keeps every tumour slice.
  No slice of this data set is empty (all 4.5-6.6 bits), so the default 2.0 would keep them all.

Each model (one ``segment`` stage, ``delineo pipeline build``) is scored on each held-out study
by ``delineo evaluate MODEL DATASET --cases ID``, which scores like a run (lesions on, full
connectivity, any-overlap detection: ``metrics/lesions.csv``). Printed: the entropy rule and threshold, the slices each filter kept, training
figures, per-study Dice / HD95 / lesion counts / volumes, lesion F1 and false positives per study,
lesion recall and precision by size bracket (the default voxel brackets and the same edges in ml),
and a summary of the lesion-table rows (``metrics/lesions.csv``); the joined table is written to
``OUT/lesions.csv``.

Three patients, one test patient: the figures show what the filter and the lesion metrics do on
real data, not a recipe's accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_brain_tumour import (  # noqa: E402  (a sibling benchmark, not a package)
    DELINEO, LEARNS, ROOT, SETUP, _fmt, comparison_table, evaluate_study, fold_summary, run_measured)

log = logging.getLogger("lesions_brain_tumour")
FOLD = 1  # trains on pgbm008, validates on pgbm006 (pipeline_brain_tumour's default)
VARIANTS = ("without", "with")


# --------------------------------------------------------------------------- table logic (tested)
def choose_threshold(profile: Sequence[dict[str, Any]], train_ids: Sequence[str], margin: float = 0.25) -> float:
    """The entropy threshold rule: lowest entropy (bits) of a training slice that holds foreground,
    minus ``margin``, rounded down to 0.05 bit (``profile``: rows of ``entropy.csv``)."""
    fg = [float(r["entropy_bits"]) for r in profile
          if r["case"] in set(train_ids) and str(r["foreground"]).lower() in ("true", "1")]
    if not fg:
        raise SystemExit("no training slice holds foreground: the entropy rule has nothing to keep")
    return max(0.0, math.floor((min(fg) - margin) / 0.05 + 1e-9) * 0.05)


def lesion_rows_summary(tables: dict[str, list[dict[str, Any]]]) -> str:
    """Markdown summary of lesion-table rows, one line per model and study: reference lesions
    (found / all, their ml), predicted lesions (correct / all), false positives (count, ml, largest)."""
    lines = ["| model | study | reference lesions found / all | reference ml (largest) | missed ml "
             "| predicted correct / all | false positives | FP ml (largest) |", "|---|---|---|---|---|---|---|---|"]
    for model, rows in tables.items():
        for case in sorted({str(r["case"]) for r in rows}):
            rs = [r for r in rows if r["case"] == case]
            ref = [r for r in rs if r["side"] == "reference"]
            pred = [r for r in rs if r["side"] == "prediction"]
            fp = [r for r in pred if r["status"] == "false_positive"]
            missed = [r for r in ref if r["status"] == "missed"]
            lines.append(
                f"| {model} | {case} | {sum(r['status'] == 'detected' for r in ref)} / {len(ref)} | "
                f"{sum(r['ml'] for r in ref):.2f} ({max((r['ml'] for r in ref), default=0):.2f}) | "
                f"{sum(r['ml'] for r in missed):.2f} | {sum(r['status'] == 'correct' for r in pred)} / {len(pred)} | "
                f"{len(fp)} | {sum(r['ml'] for r in fp):.2f} ({max((r['ml'] for r in fp), default=0):.2f}) |")
    return "\n".join(lines)


def bracket_table(tables: dict[str, list[dict[str, Any]]], n_cases: int, edges: Sequence[float], unit: str) -> str:
    """Markdown: per model, pooled lesion recall (found / reference), precision (correct /
    predicted) and false positives per study in each size bracket and overall."""
    from delineo.evaluate.lesions import summarise_lesions

    lines = [f"| model | size ({unit}) | recall (found / ref) | precision (correct / pred) | F1 | FP per study |",
             "|---|---|---|---|---|---|"]
    for model, rows in tables.items():
        for label, groups in summarise_lesions(rows, n_cases, edges, unit).items():
            for name, g in groups.items():
                lines.append(f"| {model} | {name} | {_fmt(g['recall'], 2)} ({g['n_detected']} / {g['n_ref']}) | "
                             f"{_fmt(g['precision'], 2)} ({g['n_correct']} / {g['n_pred']}) | {_fmt(g['f1'], 2)} | "
                             f"{_fmt(g['fp_per_case'], 1)} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- the run
def _config(data: Path, minutes: float, variant: str, threshold: float, overrides: Sequence[str]) -> Any:
    from delineo.config import load_config
    from delineo.recipes import recipe_path

    extra = ([f"sampling.slice_filter={{filters: [entropy], entropy_threshold: {threshold}}}"]
             if variant == "with" else [])
    return load_config(recipe_path("brain_tumour") / "experiment.yaml",
                       [f"data.source.path={data.resolve()}", *SETUP, f"train.max_minutes={minutes}",
                        *extra, *overrides])


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brain-tumour-pgbm")
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each model (trained at once)")
    ap.add_argument("--margin", type=float, default=0.25, help="bits under the lowest training tumour slice")
    ap.add_argument("--train-patient", default="pgbm008", help="fold 1's training patient (checked)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "lesions_brain_tumour")
    ap.add_argument("--skip-train", action="store_true", help="train nothing (runs holding a model are reused)")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    ap.add_argument("--train-only", choices=VARIANTS, help=argparse.SUPPRESS)  # the per-model child process
    ap.add_argument("--threshold", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    if args.train_only:  # child: train one model, one thread
        from delineo.train.loop import train

        cfg = _config(args.data, args.minutes, args.train_only, args.threshold or 0.0, args.overrides)
        train(cfg, args.out / args.train_only / "runs", FOLD, progress=False)
        return 0

    import nibabel as nib
    import yaml

    from delineo.data.sources import load_dataset
    from delineo.evaluate.inspect import inspect_dataset
    from delineo.evaluate.lesions import DEFAULT_BRACKETS, read_lesion_table

    # 1. the threshold, from the training studies' entropy profiles (as `delineo inspect` shows them)
    probe = _config(args.data, args.minutes, "without", 0.0, args.overrides)
    all_ids = [c.case_id for c in load_dataset(probe.data).cases]
    train_ids = [c for c in all_ids if c.startswith(args.train_patient)]
    inspect_dataset(args.data, args.out / "inspect", case_ids=all_ids, progress=False)
    profile = list(csv.DictReader(open(args.out / "inspect" / "entropy.csv")))
    threshold = round(choose_threshold(profile, train_ids, args.margin), 2)
    train_profile = [r for r in profile if r["case"] in train_ids]
    fg_e = [float(r["entropy_bits"]) for r in train_profile if r["foreground"] == "True"]
    log.info("entropy threshold %.2f bits", threshold)

    # 2. both models at once, one process (one thread) each, same seed, split and budget
    t0 = time.perf_counter()
    procs = {}
    for v in VARIANTS:
        run = args.out / v / "runs" / probe.name / f"fold_{FOLD}"
        if not args.skip_train and not (run / "checkpoints" / "best.pt").is_file():
            procs[v] = subprocess.Popen([sys.executable, __file__, "--train-only", v, "--threshold", str(threshold),
                                         "--minutes", str(args.minutes), "--data", str(args.data),
                                         "--out", str(args.out), *sum((["--set", o] for o in args.overrides), [])])
    for v, p in procs.items():
        if p.wait():
            raise SystemExit(f"training '{v}' failed ({p.returncode})")
    t_train = time.perf_counter() - t0

    exps = {v: args.out / v / "runs" / probe.name for v in VARIANTS}
    splits = {v: json.loads((exps[v] / "splits.json").read_text()) for v in VARIANTS}
    if splits["without"] != splits["with"]:
        raise SystemExit("the two runs have different splits; they are not comparable")
    split = splits["with"]
    if sorted(split["folds"][FOLD]["train"]) != sorted(train_ids):
        raise SystemExit(f"fold {FOLD} trains on {split['folds'][FOLD]['train']}, not on {args.train_patient}'s "
                         f"studies {train_ids}; pass --train-patient")
    test_ids = split["test"]
    kept = json.loads((exps["with"] / f"fold_{FOLD}" / "slice_filter.json").read_text())

    # 3. one plain model per variant, scored on each held-out study
    rows: dict[str, list[dict[str, Any]]] = {}
    cases: dict[str, list[dict[str, str]]] = {}
    tables: dict[str, list[dict[str, Any]]] = {}
    titles = {"without": "no slice filter", "with": f"entropy > {threshold:g} bits"}
    voxel_ml = []
    for v in VARIANTS:
        spec = args.out / f"{v}.yaml"
        spec.write_text(yaml.safe_dump({"name": f"brain_tumour_{v}_filter", "stages": [
            {"name": "tumour", "kind": "segment", "runs": [str((exps[v] / f"fold_{FOLD}").resolve())]}]}))
        model = args.out / f"{v}.delineo"
        run_measured([*DELINEO, "-q", "pipeline", "build", str(spec), "--out", str(model), "--device", "cpu"])
        for cid in test_ids:
            out = args.out / f"eval_{v}_{cid}"
            row, _ = evaluate_study(model, args.data, cid, out)
            rows.setdefault(titles[v], []).append(row)
            ref_img = nib.load(args.data / "labelsTr" / f"{cid}.nii.gz")
            voxel_ml.append(float(np.prod(ref_img.header.get_zooms()[:3])) / 1000)
            # `evaluate MODEL DATASET` scores like a run: its lesion table is under out/metrics
            cases.setdefault(titles[v], []).extend(csv.DictReader(open(out / "metrics" / "cases.csv")))
            tables.setdefault(titles[v], []).extend(read_lesion_table(out / "metrics" / "lesions.csv"))
    with open(args.out / "lesions.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["model", *next(iter(tables.values()))[0].keys()])
        writer.writeheader()
        writer.writerows({"model": m, **r} for m, rs in tables.items() for r in rs)

    # 4. the report
    ml_edges = [0.0, *(float(f"{e * float(np.mean(voxel_ml)):.3g}") for e in DEFAULT_BRACKETS[1:])]
    print(f"\n== brain-tumour-pgbm, 2D tumour model, without / with the entropy slice filter; test patient "
          f"{', '.join(sorted({c.split('_')[0] for c in test_ids}))} ({len(test_ids)} studies)")
    print(f"split: fold {FOLD} trains {', '.join(split['folds'][FOLD]['train'])}, validates "
          f"{', '.join(split['folds'][FOLD]['val'])}; both models {args.minutes:g} min, trained at once, "
          f"one thread each" + (f" ({t_train / 60:.1f} min wall)" if procs else " (reused runs)"))
    print(f"entropy rule: lowest entropy of a training tumour slice ({min(fg_e):.2f} bits, original grid, "
          f"256 bins, channel 0) minus {args.margin:g} bit, rounded down to 0.05: threshold {threshold:g} bits. "
          f"Training slices' entropy {min(float(r['entropy_bits']) for r in train_profile):.2f}-"
          f"{max(float(r['entropy_bits']) for r in train_profile):.2f} bits; at {threshold:g} the original "
          f"grid keeps {sum(float(r['entropy_bits']) > threshold for r in train_profile)} of {len(train_profile)}")
    print(f"slices kept for training (sampler, 2 mm grid): no filter {kept['total']} of {kept['total']}; "
          f"entropy > {threshold:g}: {kept['kept']['combined']} of {kept['total']}")
    for v in VARIANTS:
        f = fold_summary(exps[v] / f"fold_{FOLD}")
        print(f"{titles[v]}: {f['epochs']} epochs, {f['iterations']} iterations ({f['s_per_iter']:.2f} s each), "
              f"training loss {_fmt(f['loss_first'])} -> {_fmt(f['loss_last'])}, best validation Dice "
              f"{_fmt(f['best_val_dice'])}" + ("" if (f["best_val_dice"] or 0) >= LEARNS else
                                                 f"  ** under {LEARNS}: not learnt **"))
    print("\n" + comparison_table(rows))
    print("\n| model | study | lesion F1 | false positives | merged / split |\n|---|---|---|---|---|")
    for m, cs in cases.items():
        for c in cs:
            print(f"| {m} | {c['case']} | {_fmt(float(c['lesion_f1']) if c['lesion_f1'] else None, 2)} | "
                  f"{c['lesion_fp']} | {c['lesion_merged']} / {c['lesion_split']} |")
    print("\nlesion recall / precision by size, pooled over the test studies (voxels of the original grid):")
    print(bracket_table(tables, len(test_ids), DEFAULT_BRACKETS, "voxels"))
    print(f"\nthe same edges in ml (mean voxel {np.mean(voxel_ml) * 1000:.2f} mm3):")
    print(bracket_table(tables, len(test_ids), ml_edges, "ml"))
    print(f"\nlesion table ({args.out / 'lesions.csv'}, {sum(map(len, tables.values()))} rows) summarised:")
    print(lesion_rows_summary(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())

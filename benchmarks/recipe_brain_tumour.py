"""Benchmark: the brain_tumour recipe on the real glioblastoma follow-up MRI (brain-tumour-pgbm:
5 studies of 3 patients, T1post + FLAIR + T2, 6.5 mm slices) under a time budget, scaled down
for a CPU (coarser in-plane spacing, smaller patches); prints the held-out patient's Dice per
study, seconds per iteration and the split.

    nice -n 10 python benchmarks/recipe_brain_tumour.py [--minutes 10] [--set KEY=VALUE ...]

The 80/20 split by patient leaves ONE validation patient: the figure is a smoke-level check of
the recipe on real data, not an estimate of its accuracy.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCALED_DOWN = ["preprocess.spacing=[1.5,1.5,6.5]", "sampling.patch_size=[128,128]", "sampling.batch_size=8",
               "train.iterations_per_epoch=25", "train.val_every=2", "train.num_threads=2", "train.device=cpu"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "brain-tumour-pgbm")
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmark_brain_tumour")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    from delineo.config import load_config
    from delineo.evaluate.run import evaluate_run
    from delineo.recipes import recipe_path
    from delineo.train.loop import train

    overrides = [f"data.source.path={args.data}", f"train.max_minutes={args.minutes}", *SCALED_DOWN, *args.overrides]
    cfg = load_config(recipe_path("brain_tumour") / "experiment.yaml", overrides)
    shutil.rmtree(args.out, ignore_errors=True)
    t0 = time.perf_counter()
    run = train(cfg, args.out, fold=0, progress=False)
    train_s = time.perf_counter() - t0
    summary = evaluate_run(run, progress=False)
    rows = list(csv.DictReader(open(run / "log.csv")))
    iters = sum(int(r["iterations"]) for r in rows)
    net = sum(float(r["net_seconds"]) + float(r["data_seconds"]) for r in rows)
    splits = json.loads((args.out / cfg.name / "splits.json").read_text())["folds"][0]
    cases = list(csv.DictReader(open(run / "metrics" / "cases.csv")))
    print(f"split: train {splits['train']}, validation {splits['val']}")
    print(f"trained {len(rows)} epochs, {iters} iterations in {train_s / 60:.1f} min "
          f"({net / max(iters, 1):.2f} s per iteration incl. data)")
    for r in cases:
        print(f"  {r.get('case', r.get('case_id'))}: Dice {float(r['dice']):.3f}")
    print(f"held-out mean Dice {summary['mean_dice']:.3f} over {summary['n_cases']} studies of 1 patient")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: train the default hippocampus experiment under a time budget, predict held-out
cases, and print per-label Dice, seconds per epoch, seconds per predicted case, preprocessing
time, peak memory and the data-loading share of training time.

    python benchmarks/hippocampus.py [--data ../shared/data/hippocampus] [--minutes 20]

Held-out cases are a patient-level test split (15%) never seen in training or model selection.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmark")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from delineo.config import load_config
    from delineo.data.cache import CaseCache
    from delineo.data.sources import load_dataset
    from delineo.evaluate.metrics import score_case
    from delineo.infer.run import predict_paths
    from delineo.io import read_image
    from delineo.train.loop import train

    cfg = load_config(ROOT / "examples" / "hippocampus.yaml",
                      [f"data.source.path={args.data.resolve()}", f"train.max_minutes={args.minutes}",
                       "data.test_fraction=0.15", *args.overrides])
    if args.out.exists():
        shutil.rmtree(args.out)
    dataset = load_dataset(cfg.data)

    # 1. preprocessing of every case, from a cold cache, in this process
    cache_dir = Path(tempfile.mkdtemp())
    rss0 = peak_mb()
    t0 = time.perf_counter()
    CaseCache(cache_dir, cfg.preprocess, dataset.labels).prepare(dataset.cases, progress=False)
    t_pre = time.perf_counter() - t0
    pre_peak = peak_mb()
    shutil.rmtree(cache_dir)

    # 2. training under the budget
    t0 = time.perf_counter()
    run = train(cfg, args.out, fold=0, progress=False)
    t_train = time.perf_counter() - t0
    rows = list(csv.DictReader(open(run / "log.csv")))
    sec_epoch = float(np.mean([float(r["seconds"]) for r in rows]))
    data_s = sum(float(r["data_seconds"]) for r in rows)
    net_s = sum(float(r["net_seconds"]) for r in rows)

    # 3. prediction of the held-out test cases, one call per case (read + predict + write)
    splits = json.loads((args.out / cfg.name / "splits.json").read_text())
    by_id = {c.case_id: c for c in dataset.cases}
    pred_dir = args.out / "test_predictions"
    per_case, scores = [], {name: [] for name in dataset.labels.values()}
    from delineo.infer.predictor import Predictor

    predictor = Predictor.from_checkpoint(run)
    from delineo.io import write_image

    for cid in splits["test"]:
        case = by_id[cid]
        t0 = time.perf_counter()
        mask, _ = predictor.predict_images([read_image(case.images[0])])
        write_image(mask, pred_dir / f"{cid}.nii.gz")
        per_case.append(time.perf_counter() - t0)
        ref = read_image(case.label)
        s = score_case(mask.array, ref.array, ref.spacing, dataset.labels)
        for name in scores:
            scores[name].append(s[name]["dice"])
    dice = {k: float(np.mean(v)) for k, v in scores.items()}
    print("\n== hippocampus benchmark (held-out test split, %d cases)" % len(splits["test"]))
    print(f"train cases {len(json.loads((run / 'cases.json').read_text())['train'])}, epochs {len(rows)}, "
          f"budget {args.minutes} min, wall {t_train / 60:.1f} min")
    print("Dice per label: " + ", ".join(f"{k} {v:.4f}" for k, v in dice.items()) + f"; mean {np.mean(list(dice.values())):.4f}")
    print(f"seconds per epoch {sec_epoch:.1f} ({cfg.train.iterations_per_epoch} iterations of batch {cfg.sampling.batch_size})")
    print(f"data loading share {data_s / (data_s + net_s):.1%} (data {data_s:.0f} s, network {net_s:.0f} s)")
    print(f"seconds per predicted case (read + predict + write): mean {np.mean(per_case):.3f}, max {np.max(per_case):.3f}")
    print(f"preprocessing {len(dataset.cases)} cases: {t_pre:.1f} s, peak memory {pre_peak:.0f} MB (before {rss0:.0f} MB)")
    print(f"peak memory of the whole benchmark {peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

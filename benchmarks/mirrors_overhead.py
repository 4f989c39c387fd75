"""What the TensorBoard and MLflow mirrors cost an epoch, on the embedded hippocampus sample.

    python benchmarks/mirrors_overhead.py [--epochs 10] [--out runs/mirrors_overhead]

Trains the demo experiment (shortened: a few iterations per epoch, validation every epoch) once
per set-up: no mirror, tensorboard, mlflow (its default SQLite store beside the runs), both.
Prints, per set-up and mirror, the milliseconds per epoch spent in the training loop (queueing)
and on the mirror's background thread (writing), and the mean epoch time from log.csv (which on
a shared machine moves with the other users more than with the mirrors).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import statistics
from pathlib import Path

SETUPS = {"none": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"], "both": ["tensorboard", "mlflow"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=4, help="training iterations per epoch")
    ap.add_argument("--out", type=Path, default=Path("runs/mirrors_overhead"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from delineo.demo import demo_config
    from delineo.train.loop import Trainer

    shutil.rmtree(args.out, ignore_errors=True)
    cache = args.out / "cache"  # one preprocessing cache for every set-up
    print(f"{'set-up':12s} {'mirror':12s} {'loop ms/epoch':>14s} {'background ms/epoch':>20s} {'epoch s':>8s}")
    for setup, mirrors in SETUPS.items():
        cfg = demo_config(overrides=[f"train.epochs={args.epochs}", "train.max_minutes=null",
                                     f"train.iterations_per_epoch={args.iterations}", "train.val_every=1",
                                     "train.num_threads=1", f"name={setup}", f"track.mirrors={mirrors}"])
        trainer = Trainer(cfg, args.out / "runs", 0, cache_root=cache, progress=False)
        trainer.run()
        with open(trainer.run_dir / "log.csv", newline="") as fh:
            epoch_s = statistics.mean(float(r["seconds"]) for r in csv.DictReader(fh))
        parts = getattr(trainer.tracker, "parts", ())
        threads = [t for p in parts for t in getattr(p, "threads", [])]
        if not threads:
            print(f"{setup:12s} {'-':12s} {'':>14s} {'':>20s} {epoch_s:8.2f}")
        for t in threads:
            print(f"{setup:12s} {t.cls.name:12s} {1000 * t.submit_seconds / t.epochs:14.3f} "
                  f"{1000 * t.epoch_seconds / max(t.delivered_epochs, 1):20.1f} {epoch_s:8.2f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

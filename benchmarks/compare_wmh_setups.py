"""Compare the WMH set-up's choices on the hippocampus data under one time budget:
2.5D UNet256 with and without attention gates, focal Tversky vs Dice + cross-entropy.

    python benchmarks/compare_wmh_setups.py [--data ../shared/data/hippocampus] [--minutes 5] [--parallel 2]

Every variant trains fold 0 of examples/wmh.yaml (re-pointed at the hippocampus data, 3 softmax
outputs for background/anterior/posterior) for the same wall-clock budget; variants run
``--parallel`` at a time with one thread each so they share the machine equally. Prints Dice
per label on the fold-0 validation cases and seconds per epoch.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = {
    "unet256 + attention, focal Tversky": [],
    "unet256, focal Tversky": ["model.attention=false"],
    "unet256 + attention, Dice + CE": ["loss={name: dice_ce}"],
    "unet256, Dice + CE": ["model.attention=false", "loss={name: dice_ce}"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=5.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate for every variant")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "compare_wmh")
    args = ap.parse_args()
    common = [f"data.source.path={args.data.resolve()}", "model.out_channels=3", "sampling.patch_size=null",
              f"train.max_minutes={args.minutes}", "train.epochs=1000", "train.iterations_per_epoch=50",
              "train.val_every=2", "train.num_threads=1", f"train.optimizer.lr={args.lr}"]
    procs, names = [], list(VARIANTS)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for i, name in enumerate(names):
        sets = common + VARIANTS[name] + [f"name=cmp{i}"]
        cmd = [sys.executable, "-m", "delineo.cli", "-q", "train", str(ROOT / "examples" / "wmh.yaml"), "--runs",
               str(args.out), *[a for s in sets for a in ("--set", s)]]
        procs.append(subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        if len([p for p in procs if p.poll() is None]) >= args.parallel:
            procs[-args.parallel].wait()
    for p in procs:
        if p.wait() != 0:
            print(p.stderr.read(), file=sys.stderr)
            return 1
    print(f"\n== 2.5D UNet256 variants on hippocampus fold 0, {args.minutes} min each, Adam {args.lr}")
    for i, name in enumerate(names):
        run = args.out / f"cmp{i}" / "fold_0"
        rows = list(csv.DictReader(open(run / "log.csv")))
        summary = json.loads((run / "metrics" / "summary.json").read_text())
        per_label = ", ".join(f"{k} {v['dice']['mean']:.4f}" for k, v in summary["labels"].items())
        sec = sum(float(r["seconds"]) for r in rows) / len(rows)
        print(f"{name:38s} Dice {per_label}; mean {summary['mean_dice']:.4f}; {sec:.1f} s/epoch, {len(rows)} epochs")
    return 0


if __name__ == "__main__":
    sys.exit(main())

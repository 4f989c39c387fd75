"""Train every published set-up in examples/ at full size with ``delineo train``, as a user would.

    python benchmarks/examples_full.py [--minutes 12] [--parallel 2] [--only wmh liver ...]

Each example file runs unchanged (its own network, patch, batch, loss, optimiser, schedule and
its default data: the embedded samples) except for a wall-clock budget ``train.max_minutes``
and, when several run at once, the number of threads. The published schedules are far longer
than a CPU session (e.g. 200 epochs x 100 iterations of a ResNet-152 DeepLabV3); the budget
cuts them, and the table says how far each got. For every run: iterations done, seconds per
iteration, the training loss over the first and the last tenth of the iterations, peak memory (RSS of the whole
``delineo train`` process, from /usr/bin/time), and the fold-0 validation score of best.pt
(mean Dice; F1 for the classifier), plus the time to reach the configured length at that speed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ["headneck_petct", "wmh", "pneumothorax_unet", "pneumothorax_classifier", "brain_tumour", "liver"]


def run_one(name: str, minutes: float, threads: int, out: Path) -> dict:
    runs = out / name
    cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "delineo.cli", "train", "-q",
           str(ROOT / "examples" / f"{name}.yaml"), "--fold", "0", "--runs", str(runs),
           "--set", f"train.max_minutes={minutes}", "--set", f"train.num_threads={threads}"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"name": name, "error": proc.stderr.strip().splitlines()[-3:]}
    peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
    run = next(runs.glob("*/fold_0"))
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    from delineo.config import load_config

    cfg = load_config(ROOT / "examples" / f"{name}.yaml")
    iters = sum(int(r["iterations"]) for r in rows)
    train_s = sum(float(r["data_seconds"]) + float(r["net_seconds"]) for r in rows)
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    if summary.get("task") == "classification":
        score = f"F1 {summary['f1']:.3f}, balanced accuracy {summary['balanced_accuracy']:.3f}"
    else:
        per = "; ".join(f"{k} {v['dice']['mean']:.3f}" for k, v in summary["labels"].items())
        score = f"Dice {summary['mean_dice']:.3f} ({per})"
    full_iters = cfg.train.epochs * cfg.train.iterations_per_epoch
    return {"name": name, "iterations": iters, "epochs": len(rows), "s_per_it": train_s / max(iters, 1),
            "loss_first": float(rows[0]["train_loss_start"]), "loss_last": float(rows[-1]["train_loss_end"]), "peak_mb": peak_mb, "score": score,
            "wall_min": wall / 60, "full_hours": full_iters * train_s / max(iters, 1) / 3600,
            "full_iters": full_iters, "run": str(run)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--minutes", type=float, default=12.0)
    ap.add_argument("--parallel", type=int, default=2)
    ap.add_argument("--only", nargs="*", default=EXAMPLES)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "examples_full")
    args = ap.parse_args()
    threads = max(1, (os.cpu_count() or 2) // args.parallel)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda n: run_one(n, args.minutes, threads, args.out), args.only))
    print(f"| example ({args.minutes:g}-min budget, {threads} thread(s) each, {args.parallel} at a time) | iterations "
          "(epochs) | s/iteration | train loss first -> last tenth | fold-0 validation | peak RSS | "
          "configured length at this speed |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        if "error" in r:
            print(f"| {r['name']} | FAILED: {' / '.join(r['error'])} |||||")
            continue
        print(f"| {r['name']} | {r['iterations']} ({r['epochs']}) | {r['s_per_it']:.2f} | {r['loss_first']:.4f} -> "
              f"{r['loss_last']:.4f} | {r['score']} | {r['peak_mb']:.0f} MB | {r['full_iters']} it = "
              f"{r['full_hours']:.0f} h |")
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

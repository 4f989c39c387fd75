"""Benchmark: train the recipes as a user would (`delineo recipe copy`, then `delineo train` on
each experiment file, then `delineo pipeline build`), under a wall-clock budget per file, and
print the "What Delineo gets here" table of each recipe page.

    python benchmarks/recipes_full.py [--only headneck_petct wmh liver pneumothorax] [--minutes 30]
        [--threads 2] [--set KEY=VALUE ...] [--data NAME=PATH ...]

Each recipe is copied into ``--out/<name>`` (its data paths made absolute: the embedded stand-ins
unless ``--data NAME=PATH`` points it at real data), and every experiment file of the recipe is
trained on fold 0 in file-name order (liver: ``experiment.yaml`` before ``lesion.yaml``, which
starts from it), with ``train.max_minutes`` and ``train.num_threads`` set; a file already
trained there is reused. A recipe with a ``pipeline.yaml`` then builds it (its searches run on
the runs' validation cases) and the build time and chosen options are reported. Per file:
iterations (epochs), seconds per iteration, the training loss over the first and last tenth,
the fold-0 validation score of ``best.pt`` (mean Dice per label; F1 for a classifier), peak
memory of the ``delineo train`` process and the hours the configured schedule would take at
that speed. The brain-tumour recipe on the real pgbm MRI has its own script
(``benchmarks/recipe_brain_tumour.py``), the pneumothorax per-fold table too
(``benchmarks/recipe_pneumothorax.py``).
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
RECIPES = ["headneck_petct", "wmh", "liver", "pneumothorax"]


def train_file(folder: Path, yaml_file: Path, minutes: float, threads: int, overrides: list[str]) -> dict:
    """Train fold 0 of one experiment file inside the recipe copy; the table row of that run."""
    from delineo.config import load_config

    cfg = load_config(yaml_file)
    run = folder / "runs" / cfg.name / "fold_0"
    sets = [f"train.max_minutes={minutes}", f"train.num_threads={threads}", *overrides]
    wall, peak_mb = 0.0, float("nan")
    if not (run / "metrics" / "summary.json").is_file():
        cmd = ["/usr/bin/time", "-f", "%M", sys.executable, "-m", "delineo.cli", "-q", "train", yaml_file.name,
               "--fold", "0", "--runs", "runs", *[a for s in sets for a in ("--set", s)]]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            return {"file": yaml_file.name, "error": proc.stderr.strip().splitlines()[-3:]}
        peak_mb = int(proc.stderr.strip().splitlines()[-1]) / 1024
    with open(run / "log.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    iters = sum(int(r["iterations"]) for r in rows)
    train_s = sum(float(r["data_seconds"]) + float(r["net_seconds"]) for r in rows)
    summary = json.loads((run / "metrics" / "summary.json").read_text())
    if summary.get("task") == "classification":
        score = f"F1 {summary['f1']:.3f}, balanced accuracy {summary['balanced_accuracy']:.3f}"
    else:
        per = "; ".join(f"{k} {v['dice']['mean']:.3f}" for k, v in summary["labels"].items())
        score = f"Dice {summary['mean_dice']:.3f} ({per}), {summary.get('n_cases', '?')} cases"
    full_iters = cfg.train.epochs * cfg.train.iterations_per_epoch
    return {"file": yaml_file.name, "data": str(cfg.data.source.path), "iterations": iters, "epochs": len(rows),
            "s_per_it": train_s / max(iters, 1), "loss_first": float(rows[0]["train_loss_start"]),
            "loss_last": float(rows[-1]["train_loss_end"]), "score": score, "peak_mb": peak_mb,
            "wall_min": wall / 60, "full_iters": full_iters, "full_hours": full_iters * train_s / max(iters, 1) / 3600}


def build_pipeline(folder: Path, name: str) -> dict:
    cmd = [sys.executable, "-m", "delineo.cli", "-q", "pipeline", "build", "pipeline.yaml", "--out", f"{name}.delineo",
           "--device", "cpu"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=folder)
    out = {"seconds": time.perf_counter() - t0, "ok": proc.returncode == 0}
    if proc.returncode != 0:
        out["error"] = proc.stderr.strip().splitlines()[-3:]
        return out
    info = subprocess.run([sys.executable, "-m", "delineo.cli", "info", f"{name}.delineo"], capture_output=True,
                          text=True, cwd=folder)
    out["info"] = info.stdout.strip().splitlines()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", default=RECIPES)
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget of each experiment file")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="override for every file")
    ap.add_argument("--data", action="append", default=[], metavar="NAME=PATH",
                    help="train recipe NAME on the dataset at PATH (data.source.path)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "recipes_full")
    args = ap.parse_args()

    from delineo.recipes import copy_recipe, experiment_files

    data = dict(d.split("=", 1) for d in args.data)
    results = {}
    for name in args.only:
        folder = args.out / name
        if not folder.is_dir():
            copy_recipe(name, folder)
        extra = [f"data.source.path={Path(data[name]).resolve()}"] if name in data else []
        rows = [train_file(folder, f, args.minutes, args.threads, args.overrides + extra)
                for f in sorted(folder.glob("*.yaml")) if f.name in {p.name for p in experiment_files(name)}]
        results[name] = {"files": rows}
        if (folder / "pipeline.yaml").is_file() and all("error" not in r for r in rows):
            results[name]["pipeline"] = build_pipeline(folder, name)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    ok = True
    for name, res in results.items():
        print(f"\n### {name} ({args.minutes:g}-minute budget per file, {args.threads} thread(s), fold 0)\n")
        print("| file | data | iterations (epochs) | s/iteration | train loss first -> last tenth | "
              "fold-0 validation (best.pt) | peak RSS | configured length at this speed |")
        print("|---|---|---|---|---|---|---|---|")
        for r in res["files"]:
            if "error" in r:
                ok = False
                print(f"| {r['file']} | FAILED: {' / '.join(r['error'])} ||||||")
                continue
            print(f"| {r['file']} | {Path(r['data']).name} | {r['iterations']} ({r['epochs']}) | {r['s_per_it']:.2f} | "
                  f"{r['loss_first']:.4f} -> {r['loss_last']:.4f} | {r['score']} | {r['peak_mb']:.0f} MB | "
                  f"{r['full_iters']} it = {r['full_hours']:.0f} h |")
        if "pipeline" in res:
            p = res["pipeline"]
            ok &= p["ok"]
            print(f"\npipeline.yaml: {'built' if p['ok'] else 'FAILED'} in {p['seconds']:.0f} s")
            print("\n".join(p.get("info", p.get("error", []))))
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())

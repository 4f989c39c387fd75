"""Benchmark: a two-stage region cascade on the hippocampus (whole hippocampus, then anterior /
posterior inside it) against the one-stage model, on held-out patients.

    python benchmarks/cascade_hippocampus.py [--data ../shared/data/hippocampus] [--minutes 8]

All models are fold 0 of ``examples/hippocampus.yaml`` with the 15 % patient-level test split of
benchmarks/hippocampus.py. The one-stage model (anterior + posterior) trains ``--minutes``;
stage 1 (one sigmoid output: the union) and stage 2 (``preprocess.region``: the image cropped
to the REFERENCE hippocampus + ``--margin`` mm, background outside it set to its mean) train
half of that each, so both pipelines get the same training time. The cascade is assembled as
a pipeline file (segment -> cascade) and run as ``predict`` runs it: stage 2 sees the organ
stage 1 predicted. Printed: per-label Dice on the test cases, the union Dice of stage 1, the
validation Dice of stage 2 given the reference organ (its ceiling), iterations each model
trained, seconds per case and peak memory.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=8.0, help="training time of the one-stage model (and of the cascade)")
    ap.add_argument("--margin", type=float, default=5.0, help="stage 2 box margin in mm")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_cascade")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    help="extra overrides for every model, e.g. --set sampling.mode=2d (a CPU-sized variant)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")

    import torch
    import yaml

    from delineo.config import load_config
    from delineo.data.sources import load_dataset
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.stages import CaseData, RunOptions
    from delineo.train.loop import dice, train

    torch.set_num_threads(args.threads)
    base = [f"data.source.path={args.data.resolve()}", "data.test_fraction=0.15", f"train.num_threads={args.threads}",
            *args.overrides]
    half = args.minutes / 2
    setups = {
        "casc_one_stage": [f"train.max_minutes={args.minutes}", "sampling.patch_size=null"],
        "casc_organ": [f"train.max_minutes={half}", "model.out_channels=1", "sampling.patch_size=null"],
        "casc_parts": [f"train.max_minutes={half}", "sampling.patch_size=null",
                       "preprocess.region={labels: [1, 2], margin_mm: %g, background: mean}" % args.margin],
    }
    runs = args.out / "runs"
    cfgs, train_s = {}, {}
    for name, extra in setups.items():
        cfg = load_config(ROOT / "examples" / "hippocampus.yaml", base + extra + [f"name={name}"])
        cfgs[name] = cfg
        if not (runs / name / "fold_0" / "checkpoints" / "best.pt").is_file():
            t0 = time.perf_counter()
            train(cfg, runs, fold=0, progress=False)
            train_s[name] = time.perf_counter() - t0
    logs = {n: list(csv.DictReader(open(runs / n / "fold_0" / "log.csv"))) for n in setups}
    iterations = {n: int(sum(int(r["iterations"]) for r in rows)) for n, rows in logs.items()}
    best_val = {n: max(float(r["val_dice"]) for r in rows if r.get("val_dice")) for n, rows in logs.items()}

    pipes = {}
    for name, stages in {
        "one-stage U-Net": [{"name": "seg", "kind": "segment", "runs": ["runs/casc_one_stage/fold_0"]}],
        "cascade": [{"name": "organ", "kind": "segment", "runs": ["runs/casc_organ/fold_0"]},
                    {"name": "parts", "kind": "cascade", "organ": "organ", "runs": ["runs/casc_parts/fold_0"]}],
    }.items():
        pfile = args.out / f"{stages[-1]['name']}.yaml"
        pfile.write_text(yaml.safe_dump({"name": name.replace(" ", "_"), "stages": stages}))
        _, pipes[name] = build_pipeline(pfile, args.out / f"{stages[-1]['name']}.delineo", device="cpu",
                                        progress=False)

    cfg = cfgs["casc_one_stage"]
    ds = load_dataset(cfg.data)
    splits = json.loads((runs / "casc_one_stage" / "splits.json").read_text())
    by_id = {c.case_id: c for c in ds.cases}
    opts = RunOptions(device=torch.device("cpu"))
    scores = {n: {"Anterior": [], "Posterior": [], "seconds": []} for n in pipes}
    union = []
    for cid in splits["test"]:
        images, label = by_id[cid].load()
        ref = np.asarray(label.array)
        for name, pipe in pipes.items():
            t0 = time.perf_counter()
            case = pipe.run_case(CaseData(images, cid), opts)
            scores[name]["seconds"].append(time.perf_counter() - t0)
            mask = case.last.mask
            scores[name]["Anterior"].append(dice(mask == 1, ref == 1))
            scores[name]["Posterior"].append(dice(mask == 2, ref == 2))
            if "organ" in case.outputs:
                union.append(dice(case.outputs["organ"].mask > 0, ref > 0))
                assert not np.any(mask[case.outputs["organ"].mask == 0]), "stage 2 outside stage 1's organ"
    table = []
    for name, s in scores.items():
        a, p = float(np.mean(s["Anterior"])), float(np.mean(s["Posterior"]))
        table.append({"pipeline": name, "anterior": a, "posterior": p, "mean": (a + p) / 2,
                      "seconds_per_case": float(np.mean(s["seconds"]))})
    summary = {"test_cases": len(splits["test"]), "table": table, "stage1_union_dice": float(np.mean(union)),
               "stage2_val_dice_reference_organ": best_val["casc_parts"], "best_val_dice": best_val,
               "iterations": iterations, "train_seconds": train_s, "minutes": args.minutes, "margin_mm": args.margin,
               "threads": args.threads, "overrides": args.overrides, "peak_mb": peak_mb()}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{summary['test_cases']} held-out cases; stage 1 union Dice {summary['stage1_union_dice']:.3f}; stage 2 "
          f"validation Dice with the reference organ {best_val['casc_parts']:.3f}")
    print("| pipeline | anterior | posterior | mean | s / case |")
    print("|---|---|---|---|---|")
    for r in table:
        print(f"| {r['pipeline']} | {r['anterior']:.3f} | {r['posterior']:.3f} | {r['mean']:.3f} | "
              f"{r['seconds_per_case']:.2f} |")
    print(f"iterations {iterations}; training seconds {train_s}; peak memory {summary['peak_mb']:.0f} MB; "
          f"overrides {args.overrides}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

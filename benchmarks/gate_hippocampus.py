"""Benchmark: a classifier gate in front of a segmenter trained on positive images only (the
chest X-ray cascade), on 2D hippocampus images, against the segmenter alone.

    python benchmarks/gate_hippocampus.py [--data ../shared/data/hippocampus] [--minutes 6]

Each sagittal slice (axis 0) of the 208 MSD hippocampus MRI crops becomes one 2D image (a
one-slice NIfTI, label: anterior + posterior as one "hippocampus"); about a third of them hold
no hippocampus. Cases are grouped by patient (the volume), with the 15 % patient-level test
split of benchmarks/hippocampus.py. Fold 0 of a 2D U-Net trained with ``sampling.positive_only``
and of a ResNet-18 classifier (``train.task: classification``, balanced batches) are trained for
``--minutes`` each; the pipeline (segment -> gate, threshold searched on fold 0's validation
images) is built with ``delineo.infer.pipeline.build``; both are scored on the test images:
Dice per image (both empty = 1), false-positive images (reference empty, mask not), missed
images, classifier AUC, sensitivity and specificity at the chosen threshold, seconds per image
and peak memory.
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


def write_slices(src: Path, out: Path, axis: int = 0) -> Path:
    """One NIfTI per slice along ``axis`` (shape (H, W, 1)), binary label; a CSV case list."""
    import nibabel as nib

    from delineo.data.sources import load_dataset
    from delineo.config import DataConfig

    csv_path = out / "cases.csv"
    if csv_path.is_file():
        return csv_path
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "lab").mkdir(parents=True, exist_ok=True)
    ds = load_dataset(DataConfig(source={"type": "msd", "path": str(src)}))
    rows = []
    for case in ds.cases:
        images, label = case.load()
        img, lab = np.asarray(images[0].array, np.float32), np.asarray(label.array) > 0
        for i in range(img.shape[axis]):
            name = f"{case.case_id}_s{i:02d}"
            x = np.take(img, i, axis=axis)[..., None]
            y = np.take(lab, i, axis=axis)[..., None].astype(np.uint8)
            nib.save(nib.Nifti1Image(x, np.eye(4)), out / "img" / f"{name}.nii.gz")
            nib.save(nib.Nifti1Image(y, np.eye(4)), out / "lab" / f"{name}.nii.gz")
            rows.append({"id": name, "image": f"img/{name}.nii.gz", "label": f"lab/{name}.nii.gz",
                         "patient": case.case_id})
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["id", "image", "label", "patient"])
        w.writeheader()
        w.writerows(rows)
    return csv_path


def experiments(csv_path: Path, minutes: float, threads: int) -> tuple[dict, dict]:
    common = {
        "data": {"source": {"type": "csv", "path": str(csv_path), "channels": ["image"], "id_column": "id"},
                 "labels": {1: "hippocampus"}, "folds": 5, "seed": 0, "test_fraction": 0.15},
        "preprocess": {"orientation": None, "crop_foreground": False, "intensity": [{"preset": "mr"}]},
        "augment": {"affine": {"p": 0.2, "degrees": 10, "scale": [0.9, 1.1]}},
        "train": {"max_minutes": minutes, "epochs": 1000, "iterations_per_epoch": 100, "val_every": 1000,
                  "num_threads": threads, "seed": 0},
    }
    seg = json.loads(json.dumps(common))
    seg.update(name="gate_bench_unet", model={"name": "unet", "filters": [16, 32, 64, 128], "out_channels": 1},
               loss={"name": "dice_ce"})
    seg["sampling"] = {"mode": "2d", "axis": 2, "positive_only": True, "batch_size": 16}
    seg["train"]["optimizer"] = {"name": "adamw", "lr": 0.003}
    cls = json.loads(json.dumps(common))
    cls.update(name="gate_bench_classifier", model={"name": "classifier", "backbone": "resnet18", "out_channels": 1},
               loss={"name": "soft_f1"})
    cls["sampling"] = {"mode": "2d", "axis": 2, "foreground_fraction": 0.5, "batch_size": 32}
    cls["train"].update(task="classification", optimizer={"name": "radam", "lr": 0.001}, schedule={"name": "constant"})
    return seg, cls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each model")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-cases", type=int, default=600, help="validation images for the threshold search")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_gate")
    ap.add_argument("--slices", type=Path, default=None, help="folder of the 2D images (default: OUT/slices)")
    ap.add_argument("--cache", type=Path, default=None, help="preprocessing cache shared by both models (OUT/cache)")
    ap.add_argument("--min-sensitivity", type=float, default=None, help="sensitivity floor of the threshold search")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("gate_bench")

    import torch
    import yaml

    from delineo.config import config_from_dict
    from delineo.data.sources import load_dataset
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.stages import CaseData, RunOptions
    from delineo.train.loop import dice, train

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    csv_path = write_slices(args.data, (args.slices or args.out / "slices").resolve())
    log.info("2D images ready in %.0f s", time.perf_counter() - t0)
    seg_cfg, cls_cfg = experiments(csv_path, args.minutes, args.threads)
    runs = args.out / "runs"
    train_s = {}
    for cfg in (seg_cfg, cls_cfg):
        run = runs / cfg["name"] / "fold_0"
        if not (run / "checkpoints" / "best.pt").is_file():
            t0 = time.perf_counter()
            train(config_from_dict(cfg), runs, fold=0, progress=False, cache_root=args.cache or args.out / "cache")
            train_s[cfg["name"]] = time.perf_counter() - t0
    tag = f"_sens{args.min_sensitivity:g}" if args.min_sensitivity else ""
    pfile = args.out / f"gate_pipeline{tag}.yaml"
    pfile.write_text(yaml.safe_dump({"name": "hippocampus_gate", "build": {"max_cases": args.max_cases}, "stages": [
        {"name": "unet", "kind": "segment", "runs": [f"runs/{seg_cfg['name']}/fold_0"]},
        {"name": "gate", "kind": "gate", "runs": [f"runs/{cls_cfg['name']}/fold_0"], "threshold": "search",
         "min_sensitivity": args.min_sensitivity}]}))
    t0 = time.perf_counter()
    written, pipe = build_pipeline(pfile, args.out / f"hippocampus_gate{tag}.delineo", device="cpu", progress=False)
    build_s = time.perf_counter() - t0
    gate = pipe.stages[-1]

    # held-out test images (patients never used in training, selection or the search)
    splits = json.loads((runs / seg_cfg["name"] / "splits.json").read_text())
    ds = load_dataset(config_from_dict(seg_cfg).data)
    by_id = {c.case_id: c for c in ds.cases}
    rows = []
    t0 = time.perf_counter()
    opts = RunOptions(device=torch.device("cpu"))
    for cid in splits["test"]:
        images, label = by_id[cid].load()
        ref = np.asarray(label.array) > 0
        case = pipe.run_case(CaseData(images, cid), opts)
        alone, gated = case.outputs["unet"].mask > 0, case.outputs["gate"].mask > 0
        score = float(case.outputs["gate"].info["gate"]["scores"][0])
        rows.append({"case": cid, "ref": int(ref.any()), "score": score,
                     "dice_alone": dice(alone, ref), "dice_gated": dice(gated, ref),
                     "pred_alone": int(alone.any()), "pred_gated": int(gated.any())})
    pred_s = (time.perf_counter() - t0) / max(len(rows), 1)
    with open(args.out / f"test_images{tag}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    from delineo.infer.pipeline.gate import roc_auc

    ref = np.array([r["ref"] for r in rows], bool)
    score = np.array([r["score"] for r in rows])
    passed = score >= gate.threshold
    table = []
    for name, key in (("U-Net (positive-only) alone", "alone"), ("classifier gate + U-Net", "gated")):
        d = np.array([r[f"dice_{key}"] for r in rows])
        pred = np.array([r[f"pred_{key}"] for r in rows], bool)
        table.append({"pipeline": name, "dice_per_image": float(d.mean()), "dice_positive": float(d[ref].mean()),
                      "dice_negative": float(d[~ref].mean()), "fp_images": int((pred & ~ref).sum()),
                      "missed_images": int((~pred & ref).sum())})
    summary = {"test_images": len(rows), "positive": int(ref.sum()), "negative": int((~ref).sum()),
               "threshold": gate.threshold, "auc": roc_auc(score, ref),
               "sensitivity": float(passed[ref].mean()), "specificity": float((~passed[~ref]).mean()),
               "search": gate.tables.get("summary"), "train_seconds": train_s, "build_seconds": build_s,
               "seconds_per_image": pred_s, "peak_mb": peak_mb(), "table": table,
               "minutes_per_model": args.minutes, "threads": args.threads}
    summary["min_sensitivity"] = args.min_sensitivity
    (args.out / f"summary{tag}.json").write_text(json.dumps(summary, indent=1))
    print(f"\n{len(rows)} test images ({summary['positive']} with hippocampus, {summary['negative']} without), "
          f"gate threshold {gate.threshold:.3f} (searched on {gate.tables['summary']['n_cases']} validation images)")
    print(f"classifier: AUC {summary['auc']:.3f}, sensitivity {summary['sensitivity']:.3f}, "
          f"specificity {summary['specificity']:.3f}")
    print("| pipeline | Dice per image | Dice, positive | Dice, negative | FP images | missed images |")
    print("|---|---|---|---|---|---|")
    for r in table:
        print(f"| {r['pipeline']} | {r['dice_per_image']:.3f} | {r['dice_positive']:.3f} | {r['dice_negative']:.3f} "
              f"| {r['fp_images']} | {r['missed_images']} |")
    print(f"{pred_s * 1000:.1f} ms per image (both stages), peak memory {summary['peak_mb']:.0f} MB, "
          f"build {build_s:.0f} s, training {train_s}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

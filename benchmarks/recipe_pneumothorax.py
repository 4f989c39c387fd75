"""Benchmark: the pneumothorax recipe's evaluation table on the 2D hippocampus stand-in.

    python benchmarks/recipe_pneumothorax.py [--minutes 6] [--folds 0 1 2 3 4] [--out runs/bench_gate]

The SIIM-ACR solutions reported, per cross-validation fold, how the segmenter's probabilities
were turned into masks and whether a classifier gated them. This script computes that table:
{argmax, threshold, TTA} x {cascade, baseline}, each as mean ± standard deviation over the
folds of the mean per-image Dice (both empty = 1), the pooled Dice and the pooled IoU.

Data and models are those of ``benchmarks/gate_hippocampus.py`` (sagittal slices of the 208
MSD hippocampus crops as 2D images, about a third without hippocampus; a 15 % patient-level
test split; a 2D U-Net trained on positive images only, a ResNet-18 classifier on balanced
batches), for every fold in ``--folds``. The U-Net is also trained with in-plane mirroring (as
the solutions trained with horizontal flips), so that mirrored test-time inputs are in its
training distribution; ``--segmenter gate`` instead reuses gate_hippocampus's U-Net (trained
without flips). Runs already under ``--out`` are reused (gate_hippocampus's fold-0 classifier
and the 2D images included); missing ones are trained for ``--minutes`` each.

Variants (each fold's models; choices made on that fold's validation images, at most
``--max-val`` of them; scores on the held-out test images, the same for every fold):

* argmax: p >= 0.5 (the one sigmoid output; argmax of background vs foreground);
* threshold: p >= t, t from 0.05..0.95 searched for the best mean per-image Dice;
* TTA: p averaged with the prediction of the mirrored image (axis 0), then its own searched t;
* cascade: the image is emptied when the classifier's P(positive) < g, g searched per decoding
  (delineo.evaluate.fold_table.search_gate_threshold); baseline: no classifier.

Prints the Markdown table of the recipe page and writes ``pneumothorax_table.json`` (per-fold
scores, chosen thresholds) under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DECODINGS = ("argmax", "threshold", "TTA")


def segmenter_config(seg: dict, which: str) -> dict:
    """gate_hippocampus's U-Net, or the same trained with mirroring on the in-plane axis 0."""
    if which == "gate":
        return seg
    out = json.loads(json.dumps(seg))
    out["name"] = "ptx_table_unet_flip"
    out["augment"]["flip"] = {"p": 0.5, "axes": [0]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=6.0, help="training budget of each model that must be trained")
    ap.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-val", type=int, default=600, help="validation images per fold for the searches")
    ap.add_argument("--max-test", type=int, default=None, help="score only the first N test images (quick checks)")
    ap.add_argument("--segmenter", choices=["flip", "gate"], default="flip")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_gate")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    log = logging.getLogger("ptx_table")

    import torch
    from tqdm import tqdm

    from delineo.config import config_from_dict
    from delineo.data.sources import load_dataset
    from delineo.evaluate.fold_table import (fold_table, format_fold_table, image_counts, image_dice,
                                             search_gate_threshold, search_pixel_threshold)
    from delineo.infer.pipeline.gate import positive_scores
    from delineo.infer.predictor import Predictor, build_model
    from delineo.modelfile.checkpoint import ModelMeta, load_checkpoint
    from delineo.preprocess.pipeline import preprocess, restore
    from delineo.train.classify import classify_volume
    from delineo.train.loop import train
    from gate_hippocampus import experiments, write_slices

    torch.set_num_threads(args.threads)
    dev = torch.device("cpu")
    args.out.mkdir(parents=True, exist_ok=True)
    csv_path = write_slices(args.data, (args.out / "slices").resolve())
    seg_cfg, cls_cfg = experiments(csv_path, args.minutes, args.threads)
    seg_cfg = segmenter_config(seg_cfg, args.segmenter)
    runs = args.out / "runs"
    train_s: dict[str, float] = {}
    for fold in args.folds:
        for cfg in (seg_cfg, cls_cfg):
            if not (runs / cfg["name"] / f"fold_{fold}" / "checkpoints" / "best.pt").is_file():
                t0 = time.perf_counter()
                train(config_from_dict(cfg), runs, fold=fold, progress=False, cache_root=args.out / "cache")
                train_s[f"{cfg['name']}/fold_{fold}"] = time.perf_counter() - t0
            else:
                log.info("reusing %s fold %d", cfg["name"], fold)

    splits = json.loads((runs / seg_cfg["name"] / "splits.json").read_text())
    by_id = {c.case_id: c for c in load_dataset(config_from_dict(seg_cfg).data).cases}
    test_ids = splits["test"][: args.max_test] if args.max_test else splits["test"]

    def infer(seg: Predictor, cls: tuple, ids: list[str], desc: str) -> list[dict]:
        """Per image: reference, probabilities (plain and mirrored-averaged), classifier score."""
        cls_model, cls_cfg_obj, meta = cls
        out = []
        for cid in tqdm(ids, desc=desc, leave=False):
            images, label = by_id[cid].load()
            x, _, rec = preprocess(images, None, seg.cfg.preprocess)
            p = seg.predict_array(x)
            p_flip = np.flip(seg.predict_array(np.ascontiguousarray(np.flip(x, 1))), 1)
            xc, _, _ = preprocess(images, None, cls_cfg_obj.preprocess)
            probs = classify_volume(cls_model, xc, meta.mode, meta.axis, meta.context, meta.patch_size,
                                    meta.divisor, dev)
            out.append({"ref": np.asarray(label.array) > 0,
                        "p": restore(p, rec, probabilities=True)[-1],
                        "p_tta": restore((p + p_flip) / 2, rec, probabilities=True)[-1],
                        "score": float(positive_scores(probs).max())})
        return out

    per_fold: dict[int, dict[str, list]] = {}
    chosen: dict[int, dict[str, float]] = {}
    t_eval = time.perf_counter()
    for fold in args.folds:
        seg = Predictor.from_checkpoint(runs / seg_cfg["name"] / f"fold_{fold}", device="cpu", tta=False)
        ck = load_checkpoint(runs / cls_cfg["name"] / f"fold_{fold}")
        c_cfg, c_meta = config_from_dict(ck["config"], source=ck["path"]), ModelMeta.from_dict(ck["meta"])
        c_model = build_model(c_cfg, c_meta)
        c_model.load_state_dict(ck["model_state"])
        c_model.eval()
        cls = (c_model, c_cfg, c_meta)
        val = infer(seg, cls, splits["folds"][fold]["val"][: args.max_val], f"fold {fold} validation")
        test = infer(seg, cls, test_ids, f"fold {fold} test")
        refs_v = [v["ref"] for v in val]
        t_plain = search_pixel_threshold([v["p"] for v in val], refs_v)
        t_tta = search_pixel_threshold([v["p_tta"] for v in val], refs_v)
        rule = {"argmax": ("p", 0.5), "threshold": ("p", t_plain), "TTA": ("p_tta", t_tta)}
        chosen[fold] = {"threshold": t_plain, "TTA": t_tta}
        per_fold[fold] = {}
        for dec in DECODINGS:
            key, t = rule[dec]
            kept_v = [image_dice(image_counts(v[key] >= t, v["ref"])) for v in val]
            g = search_gate_threshold([v["score"] for v in val], kept_v, [not v["ref"].any() for v in val])
            chosen[fold][f"gate_{dec}"] = g
            base = [image_counts(v[key] >= t, v["ref"]) for v in test]
            casc = [c if v["score"] >= g else (0, 0, int(v["ref"].sum())) for c, v in zip(base, test)]
            per_fold[fold][f"{dec} + cascade"] = casc
            per_fold[fold][f"{dec}, baseline"] = base
        log.info("fold %d: thresholds %s", fold, chosen[fold])
    eval_s = time.perf_counter() - t_eval

    order = [f"{d} + cascade" for d in DECODINGS] + [f"{d}, baseline" for d in DECODINGS]
    rows = fold_table({f: {v: per_fold[f][v] for v in order} for f in per_fold})
    n_pos = sum(c[2] > 0 for c in per_fold[args.folds[0]][order[0]])
    result = {"folds": args.folds, "test_images": len(test_ids), "test_positive": n_pos,
              "segmenter": seg_cfg["name"], "classifier": cls_cfg["name"], "minutes_per_model": args.minutes,
              "chosen": chosen, "table": rows, "train_seconds": train_s, "eval_seconds": eval_s,
              "per_fold": {f: {v: [list(c) for c in cs] for v, cs in d.items()} for f, d in per_fold.items()}}
    (args.out / "pneumothorax_table.json").write_text(json.dumps(result, indent=1))
    print(f"\nfolds {args.folds}; {len(test_ids)} held-out test images ({n_pos} with hippocampus); "
          f"segmenter {seg_cfg['name']}, classifier {cls_cfg['name']}")
    print(format_fold_table(rows))
    print(f"evaluation {eval_s:.0f} s; training {train_s or 'reused'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

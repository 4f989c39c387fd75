"""Benchmark: a k-fold ensemble pipeline with test-time mirroring and post-processing chosen on
out-of-fold cases, against the best single fold, on the held-out hippocampus test split.

    python benchmarks/pipeline_hippocampus.py [--minutes 20] [--folds 5] [--skip-train]
                                              [--fusion-minutes 4]

Uses the split of ``benchmarks/hippocampus.py`` (seed 0, 15% of the patients held out as a test
set that no fold trains or validates on). The training budget ``--minutes`` is shared by the
folds. ``delineo pipeline build`` machinery chooses every option on the folds' out-of-fold
cases; the test split is only predicted. To fit a shared CPU, each test case's network passes
(per fold and mirroring) are computed once with the built pipeline's own stage and combined into
every row (single folds, mean, + TTA, + post-processing); one case is checked against
``Pipeline.predict_images`` of the saved file, bit for bit. Seconds per case are the measured
time of the passes and combination each row needs.

``--fusion-minutes`` also trains an attention U-Net (3D) and a 2D U-Net on fold 0 and compares
a learned fusion (trained on fold 0's validation cases) of them and fold 0's U-Net with the
members and their mean.
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "hippocampus")
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget for all folds together")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "pipeline_benchmark")
    ap.add_argument("--runs", type=Path, default=None, help="runs root (default: OUT/runs)")
    ap.add_argument("--flip-axes", default="0", help="axes the folds are trained to flip (p = 0.5); '' for none")
    ap.add_argument("--max-cases", type=int, default=40, help="out-of-fold cases per search")
    ap.add_argument("--test-cases", type=int, default=None, help="only the first N test cases (CPU time)")
    ap.add_argument("--skip-train", action="store_true", help="train nothing (runs already holding a model are "
                    "always reused)")
    ap.add_argument("--fusion-minutes", type=float, default=0.0)
    ap.add_argument("--no-ensemble", action="store_true", help="only the fusion comparison")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from delineo.config import load_config
    from delineo.data.sources import load_dataset
    from delineo.evaluate.metrics import score_case
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.infer.pipeline.segment import PreparedCase, fuse
    from delineo.infer.pipeline.stages import RunOptions, StageOutput, mask_from_probs
    from delineo.infer.pipeline.tta import Augmentation
    from delineo.train.loop import train

    args.out.mkdir(parents=True, exist_ok=True)
    axes = [int(a) for a in args.flip_axes.split(",") if a.strip()]
    base = [f"data.source.path={args.data.resolve()}", f"data.folds={args.folds}", "data.test_fraction=0.15",
            f"augment.flip.p={0.5 if axes else 0.0}", f"augment.flip.axes={axes or [0]}"]
    cfg = load_config(ROOT / "examples" / "hippocampus.yaml",
                      [*base, f"train.max_minutes={args.minutes / args.folds}", *args.overrides])
    runs = args.runs or args.out / "runs"
    t0 = time.perf_counter()
    if not args.skip_train:
        for fold in range(args.folds):  # runs that already hold a model are reused
            if not (runs / cfg.name / f"fold_{fold}" / "checkpoints" / "best.pt").is_file():
                train(cfg, runs, fold, progress=False)
    t_train = time.perf_counter() - t0
    exp = runs / cfg.name
    splits = json.loads((exp / "splits.json").read_text())
    test_ids = splits["test"][: args.test_cases] if args.test_cases else splits["test"]
    every = [str((exp / f"fold_{k}").resolve()) for k in range(args.folds)]

    def build(name: str, stages: list[dict]) -> tuple[Path, Pipeline]:
        spec = args.out / f"{name}.yaml"
        spec.write_text(yaml.safe_dump({"name": name, "stages": stages, "build": {"max_cases": args.max_cases}}))
        t1 = time.perf_counter()
        path, pipe = build_pipeline(spec, args.out / f"{name}.delineo", "cpu", progress=False)
        logging.info("%s built in %.0f s", name, time.perf_counter() - t1)
        return path, pipe

    full = None
    if not args.no_ensemble:
        full_path, full = build("ensemble_full", [
            {"name": "seg", "kind": "segment", "runs": every, "tta": {"flip": "search"}},
            {"name": "clean", "kind": "postprocess", "threshold": "search", "steps": "search"}])
        seg, clean = full.stages
    zoo = None
    if args.fusion_minutes > 0:
        members = [{"name": "unet_3d", "runs": [every[0]]}]
        for key, sets in {"attention_unet_3d": ["model.name=attention_unet", "name=hippocampus_attention"],
                          "unet_2d": ["sampling.mode=2d", "sampling.patch_size=null", "sampling.axis=2",
                                      "sampling.batch_size=16", "name=hippocampus_2d"]}.items():
            zcfg = load_config(ROOT / "examples" / "hippocampus.yaml",
                               [*base, "augment.flip.p=0.0", f"train.max_minutes={args.fusion_minutes}", *sets])
            if not args.skip_train and not (runs / zcfg.name / "fold_0" / "checkpoints" / "best.pt").is_file():
                train(zcfg, runs, 0, progress=False)
            members.append({"name": key, "runs": [str((runs / zcfg.name / "fold_0").resolve())]})
        _, zoo = build("zoo_fusion", [{"name": "seg", "kind": "segment", "members": members, "combine": "fusion"}])

    ds = load_dataset(cfg.data)
    by_id = {c.case_id: c for c in ds.cases}
    labels = (full or zoo).stages[0].labels  # type: ignore[union-attr]
    values = list(labels)
    rows: dict[str, list[dict]] = {}
    secs: dict[str, list[float]] = {}
    opts = RunOptions()
    ident = [Augmentation()]

    def score(name: str, mask: np.ndarray, ref, spacing, seconds: float) -> None:
        s = score_case(mask, ref, spacing, labels)
        rows.setdefault(name, []).append({n: s[n]["dice"] for n in labels.values()})
        secs.setdefault(name, []).append(seconds)

    checked = False
    for n, cid in enumerate(test_ids):
        images, label = by_id[cid].load()
        ref, spacing = np.asarray(label.array), label.spacing
        if full is not None:
            t_pre = time.perf_counter()
            prepared = PreparedCase(images)
            prepared.get(seg.members[0])
            t_pre = time.perf_counter() - t_pre
            per_fold, per_fold_tta, fold_s, fold_tta_s = [], [], [], []
            for k in range(args.folds):
                t1 = time.perf_counter()
                per_fold.append(seg.member_probs(0, prepared, opts, [k], ident))
                fold_s.append(time.perf_counter() - t1)
                t1 = time.perf_counter()
                per_fold_tta.append(seg.member_probs(0, prepared, opts, [k], seg.augs(0)[1:]) if len(seg.augs(0)) > 1
                                    else per_fold[-1])
                fold_tta_s.append(time.perf_counter() - t1)
            for k in range(args.folds):
                score(f"fold {k}", mask_from_probs(per_fold[k], values), ref, spacing, t_pre + fold_s[k])
            mean = np.mean(per_fold, axis=0)
            score("ensemble (mean of folds)", mask_from_probs(mean, values), ref, spacing, t_pre + sum(fold_s))
            n_aug = len(seg.augs(0))
            tta = (mean + np.mean(per_fold_tta, axis=0) * (n_aug - 1)) / n_aug if n_aug > 1 else mean
            t_tta = t_pre + sum(fold_s) + sum(fold_tta_s) * (n_aug > 1)
            score("ensemble + chosen TTA", mask_from_probs(tta, values), ref, spacing, t_tta)
            t1 = time.perf_counter()
            cleaned = clean.apply(StageOutput(tta, labels, mask_from_probs(tta, values)), spacing)
            score("ensemble + TTA + post-processing", cleaned, ref, spacing, t_tta + time.perf_counter() - t1)
            if not checked:  # the shortcut equals the saved file's own prediction
                saved = Pipeline.load(full_path, "cpu")
                mask, _, _ = saved.predict_images(images)
                agree = float(np.mean(np.asarray(mask.array) == cleaned))
                logging.info("check on %s: saved pipeline vs shortcut agree on %.6f of voxels", cid, agree)
                checked = True
        if zoo is not None:
            zs = zoo.stages[0]
            zp = PreparedCase(images)
            mp, ms = [], []
            for i, m in enumerate(zs.members):
                t1 = time.perf_counter()
                mp.append(zs.member_probs(i, zp, opts))
                ms.append(time.perf_counter() - t1)
                score(f"zoo member {m.name}", mask_from_probs(mp[-1], values), ref, spacing, ms[-1])
            score("zoo mean of 3", mask_from_probs(np.mean(mp, axis=0), values), ref, spacing, sum(ms))
            t1 = time.perf_counter()
            fused = fuse(mp, zs.fusion)
            score("zoo learned fusion of 3", mask_from_probs(fused, values), ref, spacing,
                  sum(ms) + time.perf_counter() - t1)
        logging.info("test case %d/%d done", n + 1, len(test_ids))

    names = list(labels.values())
    mean_of = {k: float(np.mean([np.mean([r[n] for r in v]) for n in names])) for k, v in rows.items()}
    best = max((k for k in rows if k.startswith(("fold ", "zoo member"))), key=lambda k: mean_of[k])
    print(f"\n== hippocampus pipelines, held-out test split ({len(test_ids)} cases); {args.folds} folds, "
          f"budget {args.minutes:g} min in all" + (f" ({t_train / 60:.1f} min wall)" if t_train > 1 else ""))
    print(f"| model | {' | '.join(names)} | mean Dice | s/case |")
    print("|---|" + "---|" * (len(names) + 2))
    for k, v in rows.items():
        tag = " (best single)" if k == best else ""
        print(f"| {k}{tag} | " + " | ".join(f"{np.mean([r[n] for r in v]):.4f}" for n in names)
              + f" | {mean_of[k]:.4f} | {np.mean(secs[k]):.2f} |")
    print("\nchosen on out-of-fold cases:")
    if full is not None:
        print("\n".join(full.describe()))
    if zoo is not None:
        print("\n".join(zoo.describe()))
    print(f"peak memory {peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: two runs trained side by side (e.g. the same 20-minute experiment in float32 and in
bfloat16), each alone and as a two-member ensemble with test-time mirroring and post-processing
chosen on their out-of-fold cases, on the held-out hippocampus test split.

    # train both at once, one thread each (2 cores), 20 minutes each:
    for p in fp32 bf16; do OMP_NUM_THREADS=1 delineo train examples/hippocampus.yaml --fold 0 \\
        --set name=hippocampus_$p --set train.precision=$p --set train.num_threads=1 \\
        --set data.source.path=../shared/data/hippocampus --set data.test_fraction=0.15 \\
        --set augment.flip.p=0.5 --set "augment.flip.axes=[0]" --runs bench_runs --no-evaluate & done; wait
    python benchmarks/pair_hippocampus.py bench_runs/hippocampus_fp32/fold_0 bench_runs/hippocampus_bf16/fold_0

Both runs must share the test split (same data, seed and ``test_fraction``): checked. The test
split is only predicted; every option is chosen by ``delineo pipeline build`` on the runs'
validation cases. Each test case's network passes are computed once per member and mirroring
and combined into every row; one case is checked against the saved ``.delineo`` file's own
prediction. Prediction speed of each member is also timed under float32 and bfloat16 autocast
(same weights), with the share of voxels whose label agrees.
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
    ap.add_argument("runs", type=Path, nargs=2, help="two run folders (fold_k of two experiments)")
    ap.add_argument("--names", default=None, help="comma-separated member names (default: experiment names)")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "pair_benchmark")
    ap.add_argument("--max-cases", type=int, default=60, help="out-of-fold cases per search")
    ap.add_argument("--test-cases", type=int, default=None, help="only the first N test cases")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")

    from delineo.data.sources import load_dataset
    from delineo.evaluate.metrics import score_case
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.infer.pipeline.segment import PreparedCase
    from delineo.infer.pipeline.stages import RunOptions, StageOutput, mask_from_probs
    from delineo.infer.pipeline.tta import Augmentation

    runs = [r.resolve() for r in args.runs]
    splits = [json.loads((r.parent / "splits.json").read_text())["test"] for r in runs]
    if splits[0] != splits[1]:
        raise SystemExit("the two runs have different test splits; train them on the same data, seed and "
                         "test_fraction.")
    test_ids = splits[0][: args.test_cases] if args.test_cases else splits[0]
    names = args.names.split(",") if args.names else [r.parent.name for r in runs]
    args.out.mkdir(parents=True, exist_ok=True)
    spec = args.out / "pair.yaml"
    spec.write_text(yaml.safe_dump({
        "name": "pair", "build": {"max_cases": args.max_cases},
        "stages": [{"name": "seg", "kind": "segment", "combine": "mean", "tta": {"flip": "search"},
                    "members": [{"name": n, "runs": [str(r)]} for n, r in zip(names, runs)]},
                   {"name": "clean", "kind": "postprocess", "threshold": "search", "steps": "search"}]}))
    t0 = time.perf_counter()
    path, pipe = build_pipeline(spec, args.out / "pair.delineo", "cpu", progress=False)
    build_s = time.perf_counter() - t0
    seg, clean = pipe.stages
    labels = seg.labels
    values = list(labels)

    from delineo.config import load_config
    cfg = load_config(runs[0] / "config.yaml")
    ds = load_dataset(cfg.data)
    by_id = {c.case_id: c for c in ds.cases}
    rows: dict[str, list[dict]] = {}
    secs: dict[str, list[float]] = {}
    speed: dict[str, list[float]] = {}
    agree: dict[str, list[float]] = {}
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
        t1 = time.perf_counter()
        prepared = PreparedCase(images)
        prepared.get(seg.members[0])
        t_pre = time.perf_counter() - t1
        plain, mirrored, plain_s, mirror_s = [], [], [], []
        for i in range(len(seg.members)):
            t1 = time.perf_counter()
            plain.append(seg.member_probs(i, prepared, opts, None, ident))
            plain_s.append(time.perf_counter() - t1)
            extra = seg.augs(i)[1:]
            t1 = time.perf_counter()
            mirrored.append(seg.member_probs(i, prepared, opts, None, extra) if extra else plain[-1])
            mirror_s.append(time.perf_counter() - t1)
            score(f"{seg.members[i].name} alone", mask_from_probs(plain[-1], values), ref, spacing, t_pre + plain_s[-1])
            # the same weights under the other precision: speed and label agreement
            pred = seg.predictor(i, 0, opts.device)
            x, _ = prepared.get(seg.members[i])
            for prec in ("fp32", "bf16"):
                old = pred.precision
                pred.precision = prec
                t1 = time.perf_counter()
                p = pred.predict_array(x)
                speed.setdefault(f"{seg.members[i].name}|{prec}", []).append(time.perf_counter() - t1)
                pred.precision = old
                if prec == "fp32":
                    ref_lab = p.argmax(0)
                else:
                    agree.setdefault(seg.members[i].name, []).append(float(np.mean(p.argmax(0) == ref_lab)))
        mean = np.mean(plain, axis=0)
        score("mean of the two", mask_from_probs(mean, values), ref, spacing, t_pre + sum(plain_s))
        n_aug = [len(seg.augs(i)) for i in range(len(seg.members))]
        tta = np.mean([(p + m * (k - 1)) / k if k > 1 else p for p, m, k in zip(plain, mirrored, n_aug)], axis=0)
        t_tta = t_pre + sum(plain_s) + sum(s for s, k in zip(mirror_s, n_aug) if k > 1)
        score("mean + chosen TTA", mask_from_probs(tta, values), ref, spacing, t_tta)
        t1 = time.perf_counter()
        cleaned = clean.apply(StageOutput(tta, labels, mask_from_probs(tta, values)), spacing)
        score("mean + TTA + post-processing", cleaned, ref, spacing, t_tta + time.perf_counter() - t1)
        if not checked:
            saved = Pipeline.load(path, "cpu")
            mask, _, _ = saved.predict_images(images)
            logging.info("check on %s: saved pipeline vs shortcut agree on %.6f of voxels", cid,
                         float(np.mean(np.asarray(mask.array) == cleaned)))
            checked = True
        logging.info("test case %d/%d done", n + 1, len(test_ids))

    lab = list(labels.values())
    print(f"\n== held-out hippocampus test split ({len(test_ids)} cases); pipeline built in {build_s:.0f} s")
    print(f"| model | {' | '.join(lab)} | mean Dice | s/case |")
    print("|---|" + "---|" * (len(lab) + 2))
    for k, v in rows.items():
        per = [float(np.mean([r[x] for r in v])) for x in lab]
        print(f"| {k} | " + " | ".join(f"{d:.4f}" for d in per) + f" | {np.mean(per):.4f} | {np.mean(secs[k]):.2f} |")
    print("\nprediction speed of each member's weights (one pass, no mirroring), seconds per case:")
    print("| member | fp32 | bf16 | bf16/fp32 | labels agreeing |")
    print("|---|---|---|---|---|")
    for m in seg.members:
        f, b = np.median(speed[f"{m.name}|fp32"]), np.median(speed[f"{m.name}|bf16"])
        print(f"| {m.name} | {f:.3f} | {b:.3f} | {b / f:.2f} | {np.mean(agree[m.name]):.5f} |")
    print("\nchosen on out-of-fold cases:")
    print("\n".join(pipe.describe()))
    print(f"peak memory {peak_mb():.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: float32 against bfloat16 autocast, channels-last on and off, in one process.

    python benchmarks/bf16.py [--data delineo/sample_data/hippocampus] [--iterations 20] [--cases 6]

On the default hippocampus experiment (examples/hippocampus.yaml: 3D U-Net 16-128, batch norm,
40x56x40 patches, batch 4) prints training iterations per second (network time only, from
``Trainer.train_epoch``) and prediction seconds per case for each of the four set-ups, and the
ratio to float32 with channels-last (today's default). The set-ups run interleaved in rounds
and the best round counts; times are this process's CPU seconds per thread, because on a shared
CPU the wall clock mostly measures the other users: compare the ratios. Also prints the label agreement (Dice) between bf16 and fp32 predictions.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SETUPS = [("fp32", True), ("bf16", True), ("fp32", False), ("bf16", False)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=ROOT / "delineo" / "sample_data" / "hippocampus")
    ap.add_argument("--iterations", type=int, default=10, help="training iterations per set-up and round")
    ap.add_argument("--cases", type=int, default=3, help="cases predicted per set-up and round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S")
    torch.set_num_threads(args.threads)

    from delineo.config import load_config
    from delineo.infer.predictor import Predictor
    from delineo.train.loop import Trainer, dice

    work = Path(tempfile.mkdtemp())
    trainers, predictors = {}, {}
    for prec, cl in SETUPS:
        cfg = load_config(ROOT / "examples" / "hippocampus.yaml",
                          [f"data.source.path={args.data.resolve()}", f"train.precision={prec}",
                           f"train.channels_last={str(cl).lower()}", f"infer.precision={prec}",
                           f"train.iterations_per_epoch={args.iterations}", f"name=b{prec}{int(cl)}"])
        t = Trainer(cfg, work / "runs", fold=0, cache_root=work / "cache", progress=False)
        t.setup()
        trainers[(prec, cl)] = t
    cases = trainers[SETUPS[0]].val_cases[: args.cases]
    data = [trainers[SETUPS[0]].cache.load(c) for c in cases]
    # CPU seconds of this process per thread: on a machine shared with other users the wall clock
    # mostly measures them; CPU time measures the work (both are printed)
    it_s = {k: 0.0 for k in SETUPS}
    case_s = {k: float("inf") for k in SETUPS}
    wall_it = {k: 0.0 for k in SETUPS}
    threads = torch.get_num_threads()
    for key in SETUPS:  # warm-up: oneDNN builds its kernels on first use
        trainers[key].train_epoch()
    for r in range(args.rounds):
        for key in SETUPS:
            t = trainers[key]
            c0, w0 = time.process_time(), time.perf_counter()
            row = t.train_epoch()
            cpu, wall = (time.process_time() - c0) / threads, time.perf_counter() - w0
            it_s[key] = max(it_s[key], row["iterations"] / cpu)
            wall_it[key] = max(wall_it[key], row["iterations"] / wall)
            pred = Predictor(t.model, t.cfg, t.meta, t.device, tta=False)
            pred.predict_preprocessed(np.asarray(data[0].image), data[0].record)  # warm-up
            c0 = time.process_time()
            for c in data:
                pred.predict_preprocessed(np.asarray(c.image), c.record)
            case_s[key] = min(case_s[key], (time.process_time() - c0) / threads / len(data))
            t.model.train()
        print(f"round {r + 1}/{args.rounds} done", flush=True)

    ref = SETUPS[0]
    print(f"\nhippocampus default 3D U-Net, patch {trainers[ref].meta.patch_size}, batch "
          f"{trainers[ref].cfg.sampling.batch_size}, {args.threads} threads, {torch.__version__}")
    print("it/s and s/case from CPU seconds per thread (wall it/s, noisy on a shared machine, in brackets)")
    print(f"{'precision':9} {'ch-last':7} {'train it/s':>10} {'x':>6} {'s/case':>8} {'x':>6} {'(wall it/s)':>11}")
    for key in SETUPS:
        print(f"{key[0]:9} {str(key[1]):7} {it_s[key]:10.2f} {it_s[key] / it_s[ref]:6.2f} {case_s[key]:8.3f} "
              f"{case_s[ref] / case_s[key]:6.2f} {wall_it[key]:11.2f}")
    # the models differ after training apart, so agreement is checked on one set of weights
    t = trainers[ref]
    a = Predictor(t.model, t.cfg.model_copy(update={"infer": t.cfg.infer.model_copy(update={"precision": "fp32"})}),
                  t.meta, t.device, tta=False)
    b = Predictor(t.model, t.cfg.model_copy(update={"infer": t.cfg.infer.model_copy(update={"precision": "bf16"})}),
                  t.meta, t.device, tta=False)
    ds = []
    for c in data:
        la = a.predict_preprocessed(np.asarray(c.image), c.record)[0]
        lb = b.predict_preprocessed(np.asarray(c.image), c.record)[0]
        ds.extend(dice(la == v, lb == v) for v in t.meta.labels)
    print(f"bf16 vs fp32 label Dice on the same weights (after {args.rounds * args.iterations} iterations): "
          f"min {min(ds):.4f}, mean {np.mean(ds):.4f}")
    print("ratios are within this process (the CPU is shared: absolute figures are noisy)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

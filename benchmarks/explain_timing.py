"""Time every explanation method on one held-out hippocampus case for trained 2D, 2.5D and 3D
models, and write the maps and panels.

    python benchmarks/explain_timing.py RUN_3D RUN_2D RUN_25D CASE.nii.gz [--reference LABEL] [--out DIR]

Each RUN is a run folder (or checkpoint). Prints one row per model and method: seconds on this
machine's CPU and where the NIfTI map and PNG panel are.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

METHODS = {
    "activation": dict(layer="encoders.2"),
    "activation-maximisation": dict(layer="encoders.2", params={"steps": 64}),
    "saliency": {}, "deconvnet": {}, "guided-backprop": {},
    "gradcam": dict(layer="encoders.2"), "gradcam++": dict(layer="encoders.2"),
    "occlusion": dict(params={"patch": 8}),
    "integrated-gradients": dict(params={"steps": 16}),
    "smoothgrad": dict(params={"samples": 8}),
    "channel-contribution": {},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("case", type=Path)
    ap.add_argument("--reference", type=Path, default=None)
    ap.add_argument("--label", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/explain_timing"))
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from delineo.explain.run import explain_scan
    from delineo.infer.predictor import load_checkpoint

    print(f"{'model':8s} {'method':26s} {'seconds':>8s}  outputs")
    for run in args.runs:
        mode = load_checkpoint(run)["meta"]["mode"]
        for method, spec in METHODS.items():
            t0 = time.perf_counter()
            rep = explain_scan(run, args.case, args.out / mode.replace(".", "p"), method, "positive-prediction",
                               layer=spec.get("layer"), label=args.label, reference=args.reference,
                               params=spec.get("params"))
            print(f"{mode:8s} {method:26s} {time.perf_counter() - t0:8.2f}  {rep['map']}  {rep['panels']}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

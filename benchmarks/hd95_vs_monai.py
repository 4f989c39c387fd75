"""Check both HD95 definitions against MONAI on real predictions: every label of every case of a
folder of predicted masks against the reference masks of the same names.

    python benchmarks/hd95_vs_monai.py PRED_DIR REF_DIR

Prints the largest difference between Delineo's ``max_directed`` and MONAI's
``compute_hausdorff_distance(percentile=95)`` (should be ~0), and the largest amount by which
MONAI's value exceeds Delineo's default ``pooled`` (MedPy) definition. Needs ``pip install monai``.
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path

import numpy as np


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("pred", type=Path)
    ap.add_argument("ref", type=Path)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import torch
    from monai.metrics import compute_hausdorff_distance

    from delineo.evaluate.distances import hd95
    from delineo.io.files import read_image

    n, worst_max, worst_pool = 0, 0.0, 0.0
    for path in sorted(args.pred.glob("*.nii*")):
        pred, ref = read_image(path), read_image(args.ref / path.name)
        p, r = np.asarray(pred.array), np.asarray(ref.array)
        spacing = [float(s) for s in ref.spacing]
        for value in (v for v in np.unique(r) if v > 0):
            a, b = p == value, r == value
            if not a.any():
                continue
            t = [torch.from_numpy(m[None, None].astype(np.float32)) for m in (a, b)]
            monai = float(compute_hausdorff_distance(*t, include_background=True, percentile=95, spacing=spacing)[0, 0])
            worst_max = max(worst_max, abs(hd95(a, b, spacing, "max_directed") - monai))
            worst_pool = max(worst_pool, monai - hd95(a, b, spacing, "pooled"))
            n += 1
    print(f"{n} masks: max |max_directed - MONAI| = {worst_max:.2e} mm; max (MONAI - pooled) = {worst_pool:.3f} mm")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

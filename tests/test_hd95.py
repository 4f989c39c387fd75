"""Both HD95 definitions against MONAI's ``compute_hausdorff_distance`` (an oracle, test only).

MONAI's ``percentile=95, directed=False`` is the *maximum of the two directed* 95th percentiles;
Delineo's ``max_directed`` must equal it. Delineo's default ``pooled`` (MedPy) must equal the 95th
percentile of MONAI's two directed distance sets taken together.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delineo.errors import ConfigError
from delineo.evaluate.distances import DEFAULT_HD95, HD95, directed_surface_distances, hd95
from delineo.evaluate.metrics import score_binary

monai = pytest.importorskip("monai", reason="MONAI is the HD95 oracle: pip install monai (in the 'test' extra)")
torch = pytest.importorskip("torch")
from monai.metrics import compute_hausdorff_distance  # noqa: E402
from monai.metrics.utils import get_edge_surface_distance  # noqa: E402

SAMPLE = Path(__file__).resolve().parents[1] / "delineo" / "sample_data" / "hippocampus"
PGBM = Path(__file__).resolve().parents[2] / "shared" / "data" / "brain-tumour-pgbm"


def _monai(pred: np.ndarray, ref: np.ndarray, spacing) -> tuple[float, float]:
    """(MONAI HD95, 95th percentile of MONAI's pooled directed distances)."""
    p = torch.from_numpy(pred[None, None].astype(np.float32))
    r = torch.from_numpy(ref[None, None].astype(np.float32))
    hd = float(compute_hausdorff_distance(p, r, include_background=True, percentile=95,
                                          spacing=[float(s) for s in spacing])[0, 0])
    _, dists, _ = get_edge_surface_distance(torch.from_numpy(pred), torch.from_numpy(ref),
                                            spacing=[float(s) for s in spacing], symmetric=True)
    pooled = float(np.percentile(np.concatenate([d.numpy() for d in dists]), 95))
    return hd, pooled


def _check(pred, ref, spacing):
    hd_monai, pooled_monai = _monai(pred, ref, spacing)
    assert hd95(pred, ref, spacing, "max_directed") == pytest.approx(hd_monai, rel=1e-5, abs=1e-5)
    assert hd95(pred, ref, spacing, "pooled") == pytest.approx(pooled_monai, rel=1e-5, abs=1e-5)
    assert hd95(pred, ref, spacing, "max_directed") >= hd95(pred, ref, spacing, "pooled") - 1e-9
    return hd_monai, pooled_monai


def _sphere(shape, centre, radius):
    grid = np.indices(shape).astype(float)
    return sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius ** 2


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.9, 3.0)])
def test_phantoms_match_monai(spacing):
    ref = _sphere((40, 40, 30), (20, 20, 15), 8)
    shifted = _sphere((40, 40, 30), (22, 19, 15), 8)
    _check(shifted, ref, spacing)
    # a far-away false positive: the two definitions differ, and MONAI sides with max_directed
    with_fp = shifted.copy()
    with_fp[1:5, 1:5, 1:5] = True  # ~7 % of the predicted surface: above 5 % of it, below 5 % of both
    hd_monai, pooled = _check(with_fp, ref, spacing)
    assert hd_monai > pooled
    # masks touching the array border (border voxels are surface)
    border = np.zeros((20, 20, 20), bool)
    border[:8, :8, :] = True
    _check(border, _sphere((20, 20, 20), (3, 3, 10), 6), spacing)


def test_2d_phantom_matches_monai():
    ref = _sphere((50, 50), (25, 25), 12)
    pred = _sphere((50, 50), (28, 25), 10)
    pred[2:5, 40:45] = True
    _check(pred, ref, (0.5, 0.8))


def test_real_masks_match_monai():
    """Real, irregular shapes: hippocampus manual masks of neighbouring cases (embedded sample),
    and, when ../shared is present, a FLAIR-threshold segmentation of a glioblastoma against its
    manual mask at 0.5 x 0.5 x 6.5 mm."""
    import nibabel as nib

    files = sorted((SAMPLE / "labelsTr").glob("*.nii.gz"))[:6]
    assert len(files) == 6
    for a, b in zip(files[::2], files[1::2]):
        ia, ib = nib.load(a), nib.load(b)
        xa, xb = np.asarray(ia.dataobj), np.asarray(ib.dataobj)
        shape = tuple(min(s, t) for s, t in zip(xa.shape, xb.shape))
        crop = tuple(slice(0, s) for s in shape)
        for value in (1, 2):
            _check(xa[crop] == value, xb[crop] == value, ia.header.get_zooms()[:3])
    if not PGBM.is_dir():
        return
    label_path = sorted((PGBM / "labelsTr").glob("*.nii.gz"))[0]
    case = label_path.name[: -len(".nii.gz")]
    ref_img = nib.load(label_path)
    ref = np.asarray(ref_img.dataobj) > 0
    flair = np.asarray(nib.load(PGBM / "imagesTr" / f"{case}_0001.nii.gz").dataobj, dtype=np.float32)
    # threshold inside the tumour's neighbourhood (20 voxels in plane, 2 slices): a realistic
    # rough outline with false positives and misses, small enough to keep the test fast
    box = tuple(slice(max(int(i.min()) - m, 0), int(i.max()) + m + 1) for i, m in zip(np.nonzero(ref), (20, 20, 2)))
    pred = np.zeros_like(ref)
    pred[box] = flair[box] > np.percentile(flair[ref], 25)
    _check(pred, ref, ref_img.header.get_zooms()[:3])


def test_registry_default_and_errors():
    assert DEFAULT_HD95 == "pooled" and set(HD95.names()) == {"pooled", "max_directed"}
    ref = _sphere((30, 30, 30), (15, 15, 15), 6)
    pred = _sphere((30, 30, 30), (17, 15, 15), 6)
    d_pr, d_rp = directed_surface_distances(pred, ref, (1, 1, 1))
    assert score_binary(pred, ref, (1, 1, 1))["hd95"] == pytest.approx(np.percentile(np.r_[d_pr, d_rp], 95))
    assert score_binary(pred, ref, (1, 1, 1), hd95="max_directed")["hd95"] == pytest.approx(
        max(np.percentile(d_pr, 95), np.percentile(d_rp, 95)))
    empty = np.zeros_like(ref)
    assert hd95(empty, empty, (1, 1, 1)) == 0.0 and hd95(pred, empty, (1, 1, 1)) is None
    with pytest.raises(ConfigError, match="unknown HD95 definition 'mean'"):
        hd95(pred, ref, (1, 1, 1), "mean")

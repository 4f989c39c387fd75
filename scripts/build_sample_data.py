"""Rebuild the two small samples that the example experiments run on out of the box.

Why a script: the samples are derived data; this records exactly how, so anyone can check or
rebuild them from ``../shared/data`` (the hippocampus sample itself is a plain file copy).

- ``delineo/sample_data/ct_liver``: three abdominal CTs with a liver mask (MSD layout, label 1
  liver), for examples/liver.yaml. Sources: the TotalSegmentator test CT (NIfTI, 3 mm, mask made
  by the TotalSegmentator model), the TotalSegmentator DICOM test series (20 slices, mask made
  by the model) and the dcmqi DICOM-SEG test slices (3 slices, liver drawn in 3D Slicer). The
  512x512 slices are averaged 2x2 in-plane (1.95 mm) to keep the sample small.
- ``delineo/sample_data/headneck_standin/folds.h5``: a stand-in for head-and-neck PET/CT in the
  deoxys HDF5 layout, for examples/headneck_petct.yaml. Channel 0 is the hippocampus MR of 12
  sample cases; channel 1 is a SYNTHETIC uptake map (the blurred mask plus noise), not PET.

Usage: python scripts/build_sample_data.py [--shared ../shared/data] [--only ct_liver|headneck_standin]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np

from delineo.config import DataConfig
from delineo.data.sources import load_dataset, read_label
from delineo.io.dicom import align_to_grid, read_dicom_series
from delineo.io.files import read_image, write_image
from delineo.io.image import Image

log = logging.getLogger("build_sample_data")
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "delineo" / "sample_data"
LIVER_ID = 5  # TotalSegmentator's label for the liver (labels.json)

CT_LICENCE = """\
Sample data: three abdominal CTs with a liver mask (label 1), for examples/liver.yaml and tests.

liver_001: TotalSegmentator test CT example_ct_sm.nii.gz (3 mm) with the liver of its
  example_seg.nii.gz (label 5 -> 1). The mask was made by the TotalSegmentator model.
liver_002: TotalSegmentator test DICOM series (20 slices) with the liver of
  example_seg_dicom.nii.gz; slices averaged 2x2 in-plane (1.95 mm). Mask made by the model.
  Licence of both: Apache-2.0, https://github.com/wasserth/TotalSegmentator
  Cite: Wasserthal et al., "TotalSegmentator", Radiology: Artificial Intelligence 2023.
liver_003: dcmqi test data, 3 CT slices with a liver DICOM-SEG (segment "Liver"); slices
  averaged 2x2 in-plane. Licence: BSD-3-Clause, Copyright 2017 Brigham and Women's Hospital,
  https://github.com/QIICR/dcmqi

Use these for pipelines, examples and demos, not to claim accuracy: two masks are model-made
and three CTs are far too few. Rebuilt by scripts/build_sample_data.py.
"""

HN_LICENCE = """\
Stand-in data for examples/headneck_petct.yaml in the deoxys HDF5 layout (groups fold_0..fold_4,
x (N, H, W, 2), y (N, H, W, 1), patient_idx (N,)); no PET/CT is embedded.

Channel 0: axial slices of 12 hippocampus MRI crops from the embedded sample (CC-BY-SA 4.0,
Vanderbilt University Medical Center; Antonelli et al., Nature Communications 13, 4128 (2022)),
minus 50 (so that the example's CT window -100..100 does not clip it), padded to
40x56 with -50. Channel 1: SYNTHETIC "uptake" = 5 x the Gaussian-blurred (sigma 1) mask plus
N(0, 0.3) noise, rounded to steps of 1/8; it stands in for PET so that the 2-channel network trains, nothing more.
Label: anterior and posterior hippocampus as one foreground. Share-alike binds this file.
Rebuilt by scripts/build_sample_data.py.
"""


def _halve_in_plane(image: Image, label: Image) -> tuple[Image, Image]:
    """2x2 in-plane averaging (label: majority) with the affine moved to the new voxel centres."""
    a = np.asarray(image.array, np.float32)
    i, j = a.shape[0] // 2 * 2, a.shape[1] // 2 * 2
    img = a[:i, :j].reshape(i // 2, 2, j // 2, 2, -1).mean(axis=(1, 3))
    lab = np.asarray(label.array, np.float32)[:i, :j].reshape(i // 2, 2, j // 2, 2, -1).mean(axis=(1, 3))
    affine = image.affine.copy()
    affine[:3, 3] += 0.5 * (affine[:3, 0] + affine[:3, 1])  # centre of the first 2x2 block
    affine[:3, :2] *= 2
    return (Image(np.round(img).astype(np.int16), affine, "CT"),
            Image((lab >= 0.5).astype(np.uint8), affine.copy()))


def build_ct_liver(shared: Path, out: Path) -> None:
    abdomen = shared / "ct-abdomen"
    cases: list[tuple[Image, Image]] = []
    ct = read_image(abdomen / "example_ct_sm.nii.gz")
    seg = read_image(abdomen / "example_seg.nii.gz")
    cases.append((Image(np.asarray(ct.array).astype(np.int16), ct.affine, "CT"),
                  seg.with_array((np.asarray(seg.array) == LIVER_ID).astype(np.uint8))))
    series = read_dicom_series(abdomen / "dicom")
    seg = align_to_grid(read_image(abdomen / "example_seg_dicom.nii.gz"), series, what="example_seg_dicom")
    cases.append(_halve_in_plane(series, seg.with_array((np.asarray(seg.array) == LIVER_ID).astype(np.uint8))))
    liver_dir = shared / "ct-liver-seg"
    ct3 = read_dicom_series(liver_dir)
    cases.append(_halve_in_plane(ct3, read_label(str(liver_dir / "liver.dcm"), ct3)))
    (out / "imagesTr").mkdir(parents=True, exist_ok=True)
    (out / "labelsTr").mkdir(parents=True, exist_ok=True)
    training = []
    for n, (image, label) in enumerate(cases, start=1):
        name = f"liver_{n:03d}"
        write_image(image, out / "imagesTr" / f"{name}_0000.nii.gz")
        write_image(label, out / "labelsTr" / f"{name}.nii.gz", dtype=np.uint8)
        training.append({"image": f"./imagesTr/{name}.nii.gz", "label": f"./labelsTr/{name}.nii.gz"})
        log.info("%s: %s voxels, spacing %s mm, %d liver voxels", name, image.spatial_shape,
                 np.round(image.spacing, 3).tolist(), int(np.count_nonzero(label.array)))
    meta = {"name": "CT liver sample", "description": "three abdominal CTs with a liver mask (see LICENSE.txt)",
            "licence": "Apache-2.0 (liver_001, liver_002), BSD-3-Clause (liver_003)", "tensorImageSize": "3D",
            "modality": {"0": "CT"}, "labels": {"0": "background", "1": "liver"},
            "numTraining": len(training), "numTest": 0, "training": training, "test": []}
    (out / "dataset.json").write_text(json.dumps(meta, indent=1) + "\n")
    (out / "LICENSE.txt").write_text(CT_LICENCE)


def build_headneck_standin(out: Path, n_cases: int = 12, folds: int = 5, plane=(40, 56)) -> None:
    import h5py
    from scipy.ndimage import gaussian_filter

    ds = load_dataset(DataConfig(source={"type": "msd", "path": str(SAMPLES / "hippocampus")}, max_cases=n_cases))
    rng = np.random.default_rng(0)
    out.mkdir(parents=True, exist_ok=True)
    with h5py.File(out / "folds.h5", "w") as fh:
        for f in range(folds):
            xs, ys, pids = [], [], []
            for case in ds.cases[f::folds]:
                images, label = case.load()
                img = np.asarray(images[0].array, np.float32)[: plane[0], : plane[1]] - 50  # into the CT window
                lab = (np.asarray(label.array) > 0)[: plane[0], : plane[1]]
                pad = [(0, plane[0] - img.shape[0]), (0, plane[1] - img.shape[1]), (0, 0)]
                img, lab = np.pad(img, pad, constant_values=-50), np.pad(lab, pad)
                uptake = 5 * gaussian_filter(lab.astype(np.float32), 1.0) + rng.normal(0, 0.3, lab.shape)
                uptake = np.round(uptake * 8) / 8  # steps of 1/8: compresses well, exact in float16
                pid = int(case.case_id.split("_")[-1])
                for z in range(img.shape[2]):
                    xs.append(np.stack([img[..., z], uptake[..., z]], -1))
                    ys.append(lab[..., z, None])
                    pids.append(pid)
            grp = fh.create_group(f"fold_{f}")
            opts = {"compression": "gzip", "compression_opts": 9, "shuffle": True}
            grp.create_dataset("x", data=np.stack(xs).astype(np.float16), **opts)
            grp.create_dataset("y", data=np.stack(ys).astype(np.uint8), **opts)
            grp.create_dataset("patient_idx", data=np.asarray(pids, np.int32))
    (out / "LICENSE.txt").write_text(HN_LICENCE)
    log.info("headneck stand-in: %d cases in %d folds -> %s", n_cases, folds, out / "folds.h5")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--only", choices=["ct_liver", "headneck_standin"], help="rebuild one sample")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.only in (None, "ct_liver"):
        build_ct_liver(args.shared, SAMPLES / "ct_liver")
    if args.only in (None, "headneck_standin"):
        build_headneck_standin(SAMPLES / "headneck_standin")


if __name__ == "__main__":
    main()

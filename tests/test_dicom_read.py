"""Reading real DICOM: geometry against reference files and SimpleITK, HU, DICOM-SEG onto CT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.is_dir():
    pytest.skip(f"shared test data not found at {DATA}", allow_module_level=True)

from delineo.io.dicom import align_to_grid, read_dicom_series, source_datasets  # noqa: E402
from delineo.io.dicom_seg import read_dicom_seg  # noqa: E402
from delineo.io.files import read_image  # noqa: E402

CT_DIR = DATA / "ct-abdomen" / "dicom"
CT_MASK = DATA / "ct-abdomen" / "example_seg_dicom.nii.gz"
LIVER_DIR = DATA / "ct-liver-seg"


@pytest.fixture(scope="module")
def ct():
    return read_dicom_series(CT_DIR)


def test_ct_geometry_matches_reference_mask(ct):
    mask = read_image(CT_MASK)
    assert ct.array.shape == mask.array.shape == (512, 512, 20)
    assert np.allclose(ct.spacing, mask.spacing, atol=1e-3)
    assert np.allclose(ct.spacing, [0.9765625, 0.9765625, 2.0], atol=1e-6)
    # The reference NIfTI (dcm2niix) stores rows bottom-up; flipping j gives Delineo's (and
    # SimpleITK's) column/row indexing of exactly the same world grid.
    flip_j = np.eye(4)
    flip_j[1, 1] = -1
    flip_j[1, 3] = mask.array.shape[1] - 1
    assert np.allclose(mask.affine @ flip_j, ct.affine, atol=1e-3)
    aligned = align_to_grid(mask, ct)
    assert aligned.same_grid(ct)
    assert np.array_equal(aligned.array, mask.array[:, ::-1, :])
    # Geometry is right in the world, not only on paper: organs land on plausible HU.
    assert 30 < ct.array[aligned.array == 5].mean() < 200  # liver
    assert 30 < ct.array[aligned.array == 1].mean() < 200  # spleen
    assert ct.array[np.isin(aligned.array, [32, 33])].mean() > 150  # vertebrae


def test_ct_hounsfield_units_and_meta(ct):
    assert ct.modality == "CT"
    assert ct.array.dtype == np.float32
    assert -1100 <= ct.array.min() <= -1000
    assert ct.array.max() > 500
    meta = ct.meta
    assert len(meta["dicom_files"]) == len(meta["sop_instance_uids"]) == 20
    assert len(set(meta["sop_instance_uids"])) == 20
    assert meta["series_uid"] and meta["study_uid"] and meta["frame_of_reference_uid"]
    assert meta["generated_uids"] is True  # this de-identified series has blank UIDs
    # Slices follow the position along the normal (ascending z here): files CT20 ... CT01.
    assert Path(meta["dicom_files"][0]).name == "CT20.dcm"
    headers = source_datasets(ct)
    assert len(headers) == 20 and all("PixelData" not in h for h in headers)
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    assert z == sorted(z)


def test_matches_simpleitk(ct):
    sitk = pytest.importorskip("SimpleITK")
    from delineo.io.image import affine_from_itk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(CT_DIR)))
    itk = reader.Execute()
    affine = affine_from_itk(itk.GetSpacing(), itk.GetOrigin(), itk.GetDirection())
    assert np.allclose(affine, ct.affine, atol=1e-4)
    assert np.array_equal(np.transpose(sitk.GetArrayFromImage(itk), (2, 1, 0)), ct.array)


def test_read_image_dispatches_folders():
    image = read_image(LIVER_DIR)  # 3 CT slices next to a SEG and an NRRD: the CT is the one image series
    assert image.array.shape == (512, 512, 3)
    assert image.modality == "CT"


def test_dicom_seg_onto_ct_equals_nrrd():
    ct3 = read_dicom_series(LIVER_DIR)
    seg = read_dicom_seg(LIVER_DIR / "liver.dcm", ct3)
    nrrd = read_image(LIVER_DIR / "liver_seg.nrrd")
    assert seg.same_grid(nrrd) and seg.same_grid(ct3)
    assert np.array_equal(seg.array, nrrd.array)
    assert seg.array.max() == 1 and np.count_nonzero(seg.array) > 1000
    assert seg.meta["labels"] == {1: "Liver"}
    # Mapping by name onto another label value.
    remapped = read_dicom_seg(LIVER_DIR / "liver.dcm", ct3, labels={3: "liver"})
    assert np.array_equal(remapped.array, nrrd.array * 3)


def test_align_to_grid_permutes_flips_and_shifts_exactly():
    from delineo.io.image import Image

    rng = np.random.default_rng(0)
    ref_array = rng.integers(0, 4, size=(6, 5, 4)).astype(np.uint8)
    ref = Image(ref_array, np.diag([0.8, 0.9, 2.5, 1.0]) + np.array([[0, 0, 0, 10], [0, 0, 0, -3], [0, 0, 0, 7], [0, 0, 0, 0]]))
    # The same voxels stored with axes (k, i, j), i reversed: index (a, b, c) = (k, 5 - i, j).
    moved = np.transpose(ref_array, (2, 0, 1))[:, ::-1, :]
    to_ref = np.zeros((4, 4))
    to_ref[0, 1], to_ref[0, 3] = -1, 5  # i = 5 - b
    to_ref[1, 2] = 1  # j = c
    to_ref[2, 0] = 1  # k = a
    to_ref[3, 3] = 1
    other = Image(moved.copy(), ref.affine @ to_ref)
    assert np.array_equal(align_to_grid(other, ref).array, ref_array)
    # Shifted by two slices: the part outside the reference grid is dropped.
    shifted = Image(ref_array.copy(), ref.affine @ np.array([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 2], [0, 0, 0, 1.0]]))
    out = align_to_grid(shifted, ref).array
    assert np.array_equal(out[:, :, 2:], ref_array[:, :, :2]) and not out[:, :, :2].any()

"""A scan that arrived as NIfTI written as a DICOM series, and a DICOM-SEG / RTSTRUCT referencing
it: the series reads back to the NIfTI's affine and values, and the SEG's frames, placed by their
own ImagePositionPatient / ImageOrientationPatient / PixelSpacing (pydicom only, not Delineo's
readers), land on the NIfTI mask voxel for voxel, also for an oblique, flipped grid."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from delineo.errors import InputError
from delineo.io.dicom import read_dicom_series
from delineo.io.dicom_series import write_dicom_series
from delineo.io.export import write_prediction
from delineo.io.files import read_image
from delineo.io.image import Image

CASE = Path(__file__).resolve().parents[1] / "delineo" / "sample_data" / "hippocampus" / "imagesTr" / "hippocampus_001_0000.nii.gz"
LABELS = {1: "Anterior", 2: "Posterior"}


def oblique_affine() -> np.ndarray:
    """A rotated (20 degrees about z, 10 about x), anisotropic grid whose j and k axes point
    backwards, with an origin off the integers: nothing lines up by accident."""
    a, b = np.radians(20), np.radians(10)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.8, -1.1, -2.5])
    affine[:3, 3] = [-31.7, 12.25, 40.125]
    return affine


def seg_on_grid(seg_path: Path, shape: tuple[int, ...], affine_ras: np.ndarray) -> dict[str, np.ndarray]:
    """Each segment of a DICOM-SEG as a mask on the NIfTI grid, placed by the SEG's own geometry:
    pixel (r, c) of a frame is at IPP + c * PixelSpacing[1] * row_dir + r * PixelSpacing[0] * col_dir
    (LPS), mapped through the inverse RAS affine to the nearest voxel (which must be an integer)."""
    ds = pydicom.dcmread(seg_path)
    shared = ds.SharedFunctionalGroupsSequence[0]
    iop = np.array(shared.PlaneOrientationSequence[0].ImageOrientationPatient, dtype=float)
    spacing = np.array(shared.PixelMeasuresSequence[0].PixelSpacing, dtype=float)
    names = {int(s.SegmentNumber): s.SegmentLabel for s in ds.SegmentSequence}
    frames = ds.pixel_array.reshape(int(ds.NumberOfFrames), ds.Rows, ds.Columns)
    to_index = np.linalg.inv(affine_ras)
    rr, cc = np.meshgrid(np.arange(ds.Rows), np.arange(ds.Columns), indexing="ij")
    out = {name: np.zeros(shape, np.uint8) for name in names.values()}
    for frame, group in zip(frames, ds.PerFrameFunctionalGroupsSequence):
        ipp = np.array(group.PlanePositionSequence[0].ImagePositionPatient, dtype=float)
        ident = group if "SegmentIdentificationSequence" in group else shared  # shared when one segment
        number = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        lps = ipp + cc[..., None] * spacing[1] * iop[:3] + rr[..., None] * spacing[0] * iop[3:]
        ras = lps * np.array([-1.0, -1.0, 1.0])
        ijk = ras @ to_index[:3, :3].T + to_index[:3, 3]
        assert np.allclose(ijk, np.round(ijk), atol=1e-3), "SEG pixels fall between the NIfTI voxels"
        ijk = np.round(ijk).astype(int)
        on = frame > 0
        out[names[number]][ijk[on, 0], ijk[on, 1], ijk[on, 2]] = 1
    return out


@pytest.mark.parametrize("grid", ["sample", "oblique"])
def test_nifti_scan_to_dicom_series_and_seg_round_trip(tmp_path, grid):
    image = read_image(CASE)
    affine = image.affine if grid == "sample" else oblique_affine()
    # float values (not integers): stored with a rescale; the CT reader applies it back
    values = np.asarray(image.array, dtype=np.float32) * 3.7 - 512.25
    scan = Image(values, affine, meta={"path": "scan.nii.gz"})
    series = write_dicom_series(scan, tmp_path / "series", "CT", patient_id="P1")
    files = sorted(series.glob("*.dcm"))
    assert len(files) == scan.spatial_shape[2]
    heads = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert len({h.SeriesInstanceUID for h in heads}) == 1 and len({h.SOPInstanceUID for h in heads}) == len(files)
    assert heads[0].Modality == "CT" and heads[0].SOPClassUID == "1.2.840.10008.5.1.4.1.1.2"

    back = read_dicom_series(series)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)  # same grid, same voxel order
    slope = float(heads[0].RescaleSlope)
    assert np.abs(back.array - values).max() <= slope / 2 + 1e-3

    mask = np.zeros(scan.spatial_shape, np.uint8)
    mask[5:15, 10:30, 3:20] = 1
    mask[20:25, 30:40, 25:30] = 2
    mask[0, 0, 0] = 2  # a corner voxel: off-by-one in the placement would lose it
    seg = write_prediction(Image(mask, affine), back, tmp_path / "mask_seg.dcm", "dicom-seg", LABELS)
    placed = seg_on_grid(seg, scan.spatial_shape, affine)
    np.testing.assert_array_equal(placed["Anterior"], mask == 1)
    np.testing.assert_array_equal(placed["Posterior"], mask == 2)
    ds = pydicom.dcmread(seg, stop_before_pixels=True)
    refs = {r.ReferencedSOPInstanceUID for s in ds.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == heads[0].SeriesInstanceUID
    assert refs <= {h.SOPInstanceUID for h in heads} and ds.FrameOfReferenceUID == heads[0].FrameOfReferenceUID

    rt = write_prediction(Image(mask, affine), back, tmp_path / "mask_rt.dcm", "rtstruct", LABELS)
    from delineo.io.rtstruct import read_rtstruct

    again = read_rtstruct(rt, back, labels=LABELS)
    np.testing.assert_allclose(again.affine, affine, atol=1e-5)
    for value in (1, 2):  # contours are polygons through voxel centres: compared by overlap
        a, b = np.asarray(again.array) == value, mask == value
        assert 2 * (a & b).sum() / (a.sum() + b.sum()) > 0.9


def test_modalities_and_refusals(tmp_path):
    image = read_image(CASE)
    for modality, sop in (("MR", "1.2.840.10008.5.1.4.1.1.4"), ("OT", "1.2.840.10008.5.1.4.1.1.7")):
        folder = write_dicom_series(image, tmp_path / modality, modality)
        head = pydicom.dcmread(next(folder.glob("*.dcm")))
        assert head.SOPClassUID == sop and head.Modality == modality
        back = read_dicom_series(folder)
        np.testing.assert_array_equal(back.array, image.array)  # integers are stored as they are
    with pytest.raises(InputError, match="modality 'PT'"):
        write_dicom_series(image, tmp_path / "pt", "PT")
    with pytest.raises(InputError, match="not empty"):
        write_dicom_series(image, tmp_path / "MR", "MR")
    sheared = image.affine.copy()
    sheared[0, 2] = 0.5  # the slice axis leans: not a stack of parallel DICOM slices
    with pytest.raises(InputError, match="slice axis is not perpendicular"):
        write_dicom_series(Image(np.asarray(image.array), sheared), tmp_path / "sheared")
    assert not (tmp_path / "sheared").exists() and not list(tmp_path.glob(".sheared*"))

"""DICOM read/write round trips that run on a fresh clone (no ../shared): a CT series is written
with pydicom from the embedded CT liver sample (liver_002: 20 slices, 1.95 x 1.95 x 2 mm, with
its liver mask), then read back, and DICOM-SEG, RTSTRUCT, overlay and the DICOM -> MSD
conversion are checked against the known mask."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from delineo.io.convert import convert_dicom_collection
from delineo.io.dicom import read_dicom_series
from delineo.io.dicom_seg import read_dicom_seg, write_dicom_seg
from delineo.io.export import write_prediction
from delineo.io.files import read_image
from delineo.io.image import Image, itk_from_affine
from delineo.io.overlay import write_overlay_series
from delineo.io.rtstruct import read_rtstruct, write_rtstruct

SAMPLE = Path(__file__).resolve().parents[1] / "delineo" / "sample_data" / "ct_liver"


def write_ct_series(image: Image, folder: Path, patient: str = "Doe^Jane") -> Path:
    """Write ``image`` (HU, int16) as a CT series whose geometry is exactly ``image``'s."""
    spacing, origin, direction = itk_from_affine(image.affine)  # LPS
    folder.mkdir(parents=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    arr = np.asarray(image.array).astype(np.int16)
    for k in range(arr.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"IM{k:04d}"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, "P-777", "19600229", "F"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20200101", "120000", "1", "A1"
        ds.ReferringPhysicianName = ""
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, k + 1
        ds.ImageOrientationPatient = [float(v) for v in list(direction[:, 0]) + list(direction[:, 1])]
        ds.ImagePositionPatient = [float(v) for v in origin + k * spacing[2] * direction[:, 2]]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]  # row spacing (j), column spacing (i)
        ds.SliceThickness = float(spacing[2])
        ds.Rows, ds.Columns = arr.shape[1], arr.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
        ds.PixelData = np.ascontiguousarray(arr[:, :, k].T).tobytes()
        ds.save_as(folder / f"IM{k:04d}", enforce_file_format=True)
    return folder


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("dicom_sample")
    nifti = read_image(SAMPLE / "imagesTr" / "liver_002_0000.nii.gz")
    label = read_image(SAMPLE / "labelsTr" / "liver_002.nii.gz")
    folder = write_ct_series(nifti, root / "patient" / "ct")
    ct = read_dicom_series(folder)
    mask = ct.with_array((np.asarray(label.array) > 0).astype(np.uint8))
    return root, folder, nifti, ct, mask


def _dice(a, b) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_series_reads_back_with_the_nifti_geometry_and_hu(sample):
    _, _, nifti, ct, mask = sample
    assert ct.same_grid(nifti, atol=1e-3) and ct.array.shape == (256, 256, 20)
    assert np.array_equal(np.asarray(ct.array, dtype=np.float32), np.asarray(nifti.array, dtype=np.float32))
    assert ct.modality == "CT" and len(ct.meta["sop_instance_uids"]) == 20
    assert mask.array.sum() > 5000  # the liver is there


def test_dicom_seg_round_trip_on_the_sample(sample, tmp_path):
    _, _, _, ct, mask = sample
    out = write_dicom_seg(mask, ct, tmp_path / "seg.dcm", {1: "liver"}, None, "unit")
    back = read_dicom_seg(out, ct, labels={1: "liver"})
    assert back.same_grid(ct) and np.array_equal(back.array, mask.array)
    ds = pydicom.dcmread(out)
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.meta["series_uid"]
    assert ds.PatientID == "P-777"  # a DICOM object must attach to its patient


def test_rtstruct_round_trip_on_the_sample(sample, tmp_path):
    _, _, _, ct, mask = sample
    out = write_rtstruct(mask, ct, tmp_path / "rt.dcm", {1: "liver"}, None, "unit")
    back = read_rtstruct(out, ct, labels={1: "liver"})
    assert _dice(back.array == 1, mask.array == 1) >= 0.95


def test_overlay_and_nifti_sidecar_on_the_sample(sample, tmp_path):
    _, _, _, ct, mask = sample
    out = write_overlay_series(mask, ct, tmp_path / "overlay", {1: (0, 255, 0)})
    files = sorted(out.iterdir())
    assert len(files) == 20 and pydicom.dcmread(files[0]).pixel_array.shape == (256, 256, 3)
    nifti = write_prediction(mask, ct, tmp_path / "pred", "nifti", {1: "liver"})
    assert np.array_equal(read_image(nifti).array, mask.array)
    text = (tmp_path / "pred.json").read_text()
    assert ct.meta["series_uid"] in text and "Doe" not in text and "P-777" not in text and "19600229" not in text
    write_prediction(mask, ct, tmp_path / "optin", "nifti", {1: "liver"}, patient_data=True)
    assert "P-777" in (tmp_path / "optin.json").read_text()


def test_convert_collection_on_the_sample(sample, tmp_path):
    root, folder, nifti, ct, mask = sample
    write_rtstruct(mask, ct, folder.parent / "rt" / "rt.dcm", {1: "liver"}, None, "unit")
    out = convert_dicom_collection(folder.parent, tmp_path / "msd", labels={1: "liver"})
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver"}
    images = sorted((out / "imagesTr").iterdir())
    labels = sorted((out / "labelsTr").iterdir())
    assert len(images) == len(labels) == 1
    img, lab = read_image(images[0]), read_image(labels[0])
    assert img.same_grid(nifti) and np.array_equal(np.asarray(img.array, np.float32), np.asarray(nifti.array, np.float32))
    assert _dice(lab.array == 1, mask.array == 1) >= 0.95

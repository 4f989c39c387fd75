"""Writing clinical outputs from a real CT and its mask: DICOM-SEG, RTSTRUCT, RGB overlay,
write_prediction's formats and sidecars, and the DICOM collection -> MSD conversion."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.is_dir():
    pytest.skip(f"shared test data not found at {DATA}", allow_module_level=True)

import pydicom  # noqa: E402

from delineo.errors import InputError  # noqa: E402
from delineo.io.convert import convert_dicom_collection  # noqa: E402
from delineo.io.dicom import align_to_grid, read_dicom_series  # noqa: E402
from delineo.io.dicom_seg import read_dicom_seg, write_dicom_seg  # noqa: E402
from delineo.io.export import write_prediction  # noqa: E402
from delineo.io.files import read_image  # noqa: E402
from delineo.io.image import Image  # noqa: E402
from delineo.io.overlay import write_overlay_series  # noqa: E402
from delineo.io.rtstruct import read_rtstruct, trace_contours, write_rtstruct  # noqa: E402

CT_DIR = DATA / "ct-abdomen" / "dicom"
LIVER_DIR = DATA / "ct-liver-seg"
LABELS = {1: "spleen", 5: "liver", 32: "vertebrae_T12"}


@pytest.fixture(scope="module")
def ct():
    return read_dicom_series(CT_DIR)


@pytest.fixture(scope="module")
def mask(ct):
    ref = align_to_grid(read_image(DATA / "ct-abdomen" / "example_seg_dicom.nii.gz"), ct)
    array = np.where(np.isin(ref.array, list(LABELS)), ref.array, 0).astype(np.uint8)
    array[:, :, 8:11][array[:, :, 8:11] == 1] = 0  # spleen absent from some middle slices: sparse frames
    assert all((array == v).sum() > 1000 for v in LABELS)
    return ct.with_array(array)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_dicom_seg_round_trip(ct, mask, tmp_path):
    out = write_dicom_seg(mask, ct, tmp_path / "pred.dcm", LABELS, {5: (0, 255, 0)}, "unet-test")
    back = read_dicom_seg(out, ct, labels=LABELS)
    assert back.same_grid(ct)
    assert np.array_equal(back.array, mask.array)
    assert back.meta["labels"] == LABELS
    # Without labels, segment numbers 1..N in increasing label value.
    plain = read_dicom_seg(out, ct)
    assert plain.meta["labels"] == {1: "spleen", 2: "liver", 3: "vertebrae_T12"}
    assert np.array_equal(plain.array > 0, mask.array > 0)

    ds = pydicom.dcmread(out)
    assert ds.Modality == "SEG" and ds.SeriesInstanceUID != ct.meta["series_uid"]
    assert ds.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.meta["series_uid"]
    assert ds.FrameOfReferenceUID == ct.meta["frame_of_reference_uid"]
    for segment in ds.SegmentSequence:
        assert segment.SegmentAlgorithmType == "AUTOMATIC"
        assert "Delineo" in segment.SegmentAlgorithmName and "unet-test" in segment.SegmentAlgorithmName
    liver = ds.SegmentSequence[1]
    assert liver.SegmentLabel == "liver" and liver.SegmentedPropertyTypeCodeSequence[0].CodeValue == "10200004"
    referenced = {f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID for f in ds.PerFrameFunctionalGroupsSequence}
    assert referenced <= set(ct.meta["sop_instance_uids"])


def test_dicom_seg_partial_volume(ct, tmp_path):
    array = np.zeros(ct.spatial_shape, dtype=np.uint8)
    array[200:260, 180:300, 6:10] = 7  # frames only for slices 6..9
    out = write_dicom_seg(ct.with_array(array), ct, tmp_path / "part.dcm", {7: "tumour"}, None, "m")
    assert pydicom.dcmread(out, stop_before_pixels=True).NumberOfFrames == 4
    assert np.array_equal(read_dicom_seg(out, ct, labels={7: "Tumour"}).array, array)
    with pytest.raises(InputError, match="mask is empty"):
        write_dicom_seg(ct.with_array(np.zeros_like(array)), ct, tmp_path / "empty.dcm", {}, None, "m")


def test_rtstruct_round_trip(ct, mask, tmp_path):
    out = write_rtstruct(mask, ct, tmp_path / "rt.dcm", LABELS, None, "unet-test")
    back = read_rtstruct(out, ct, labels=LABELS)
    for value in LABELS:
        assert _dice(back.array == value, mask.array == value) >= 0.95, LABELS[value]
    plain = read_rtstruct(out, ct)
    assert plain.meta["labels"] == {1: "spleen", 2: "liver", 3: "vertebrae_T12"}

    ds = pydicom.dcmread(out)
    assert ds.Modality == "RTSTRUCT" and ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3"
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == ct.meta["frame_of_reference_uid"]
    series = frame.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.meta["series_uid"]
    assert [i.ReferencedSOPInstanceUID for i in series.ContourImageSequence] == ct.meta["sop_instance_uids"]
    for roi in ds.StructureSetROISequence:
        assert roi.ROIGenerationAlgorithm == "AUTOMATIC" and "unet-test" in roi.ROIGenerationDescription
    for roi_contours in ds.ROIContourSequence:
        for contour in roi_contours.ContourSequence:
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            assert contour.ContourImageSequence[0].ReferencedSOPInstanceUID in ct.meta["sop_instance_uids"]
            assert len(contour.ContourData) == 3 * contour.NumberOfContourPoints


def test_rtstruct_holes_survive(ct, tmp_path):
    array = np.zeros(ct.spatial_shape, dtype=np.uint8)
    array[100:160, 200:260, 4] = 2  # a ring with an island inside the hole
    array[115:145, 215:245, 4] = 0
    array[125:135, 225:235, 4] = 2
    array[300, 300, 5] = 2  # a single voxel
    assert len(trace_contours(array[:, :, 4] == 2)) == 3
    out = write_rtstruct(ct.with_array(array), ct, tmp_path / "holes.dcm", {2: "lesion"}, None, "m")
    back = read_rtstruct(out, ct, labels={2: "lesion"})
    assert np.array_equal(back.array, array)


def test_overlay_series(ct, mask, tmp_path):
    out = write_overlay_series(mask, ct, tmp_path / "overlay", {5: (0, 255, 0), 1: (255, 0, 0)}, opacity=0.4)
    files = sorted(out.iterdir())
    assert len(files) == ct.spatial_shape[2]
    uids = set()
    for k, path in enumerate(files):
        ds = pydicom.dcmread(path)
        assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.PhotometricInterpretation == "RGB" and ds.SamplesPerPixel == 3 and ds.BitsAllocated == 8
        assert (ds.Rows, ds.Columns) == (512, 512)
        assert ds.pixel_array.shape == (512, 512, 3) and ds.pixel_array.dtype == np.uint8
        assert ds.SeriesInstanceUID != ct.meta["series_uid"]
        assert ds.SOPInstanceUID not in ct.meta["sop_instance_uids"]
        assert ds.StudyInstanceUID == ct.meta["study_uid"]
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == ct.meta["sop_instance_uids"][k]
        uids.add(ds.SOPInstanceUID)
    assert len(uids) == len(files)
    # Liver pixels are green-tinted, background stays grey.
    ds = pydicom.dcmread(files[10])
    rgb = ds.pixel_array.astype(int)
    liver = mask.array[:, :, 10].T == 5
    assert (rgb[liver][:, 1] > rgb[liver][:, 0]).all()
    outside = mask.array[:, :, 10].T == 0
    assert (rgb[outside][:, 0] == rgb[outside][:, 1]).all()
    # Writing again replaces the previous overlay.
    write_overlay_series(mask, ct, out)
    assert len(list(out.iterdir())) == len(files)


def test_write_prediction_formats(ct, mask, tmp_path):
    nifti = write_prediction(mask, ct, tmp_path / "pred", "nifti", LABELS, model_name="m1")
    assert nifti.name == "pred.nii.gz"
    back = read_image(nifti)
    assert back.same_grid(ct) and np.array_equal(back.array, mask.array)
    sidecar = json.loads((tmp_path / "pred.json").read_text())
    assert sidecar["source"]["StudyInstanceUID"] == ct.meta["study_uid"] and sidecar["model"] == "m1"
    anon = write_prediction(mask, ct, tmp_path / "anon.nrrd", "nrrd", LABELS, anonymise=True)
    text = (tmp_path / "anon.json").read_text()
    assert np.array_equal(read_image(anon).array, mask.array)
    assert ct.meta["study_uid"] not in text and "source" not in json.loads(text)
    for fmt in ("dicom-seg", "rtstruct", "overlay"):
        assert write_prediction(mask, ct, tmp_path / fmt, fmt, LABELS).exists()
    nifti_source = Image(ct.array, ct.affine, "CT", {"path": "ct.nii.gz"})
    with pytest.raises(InputError, match="needs a DICOM source"):
        write_prediction(mask, nifti_source, tmp_path / "x", "dicom-seg", LABELS)
    with pytest.raises(InputError, match="cannot be anonymised"):
        write_prediction(mask, ct, tmp_path / "y", "rtstruct", LABELS, anonymise=True)
    with pytest.raises(InputError, match="unknown output format"):
        write_prediction(mask, ct, tmp_path / "z", "png", LABELS)


def test_convert_dicom_collection(ct, mask, tmp_path):
    collection = tmp_path / "in"
    shutil.copytree(CT_DIR, collection / "patient_a" / "ct")
    write_rtstruct(mask, ct, collection / "patient_a" / "rt" / "rtstruct.dcm", LABELS, None, "m")
    shutil.copytree(LIVER_DIR, collection / "patient_b")  # 3 CT slices + liver.dcm (+ an NRRD, ignored)
    out = convert_dicom_collection(collection, tmp_path / "msd", labels={1: "liver", 2: "spleen"})
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "liver", "2": "spleen"}
    assert meta["numTraining"] == 2 and meta["modality"] == {"0": "CT"}
    sources = json.loads((out / "sources.json").read_text())
    by_type = {v["annotation_type"]: k for k, v in sources.items()}

    case_a = by_type["RTSTRUCT"]
    image = read_image(out / "imagesTr" / f"{case_a}_0000.nii.gz")
    label = read_image(out / "labelsTr" / f"{case_a}.nii.gz")
    assert image.same_grid(ct) and label.same_grid(ct)
    assert np.array_equal(image.array, ct.array)
    expected = np.select([mask.array == 5, mask.array == 1], [1, 2], 0)
    assert np.array_equal(label.array, expected)  # vertebrae not in labels: dropped

    case_b = by_type["SEG"]
    nrrd = read_image(LIVER_DIR / "liver_seg.nrrd")
    label_b = read_image(out / "labelsTr" / f"{case_b}.nii.gz")
    assert label_b.same_grid(nrrd) and np.array_equal(label_b.array, nrrd.array)

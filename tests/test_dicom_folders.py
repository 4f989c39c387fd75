"""Messy clinical folders built from copies of real files: several series, shuffled names,
nested folders, non-DICOM files, missing slices, tilt, unsupported compression, PET SUV, MR."""

from __future__ import annotations

import logging
import math
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
if not DATA.is_dir():
    pytest.skip(f"shared test data not found at {DATA}", allow_module_level=True)

import pydicom  # noqa: E402

from delineo.errors import InputError  # noqa: E402
from delineo.io.dicom import list_series, read_dicom_series  # noqa: E402

CT_DIR = DATA / "ct-abdomen" / "dicom"
LIVER_DIR = DATA / "ct-liver-seg"
LIVER_CT = sorted(LIVER_DIR.glob("0*.dcm"))


@pytest.fixture(scope="module")
def messy(tmp_path_factory) -> Path:
    """Two series under shuffled, renamed file names in nested folders, plus non-DICOM files."""
    root = tmp_path_factory.mktemp("messy")
    rng = random.Random(7)
    files = [(p, "a") for p in sorted(CT_DIR.iterdir())] + [(p, "b") for p in LIVER_CT]
    rng.shuffle(files)
    for n, (src, _) in enumerate(files):
        sub = root / ("x" if n % 3 else "y/z") / ("deep" if n % 2 else "")
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy(src, sub / f"{rng.getrandbits(40):010x}")  # no suffix, random names
    (root / "notes.txt").write_text("not DICOM\n")
    (root / "x" / "scan.json").write_text("{}\n")
    return root


def test_list_series_finds_both(messy, caplog):
    with caplog.at_level(logging.INFO, logger="delineo.io.dicom"):
        infos = list_series(messy)
    assert sorted(s.n_slices for s in infos) == [3, 20]
    assert {s.modality for s in infos} == {"CT"}
    assert any("notes.txt" in r.getMessage() and "not a DICOM file" in r.getMessage() for r in caplog.records)


def test_several_series_need_a_choice(messy):
    with pytest.raises(InputError) as err:
        read_dicom_series(messy)
    text = str(err.value)
    assert "2 image series" in text and "CT Body 3.0" in text and "20 files" in text and "3 files" in text
    assert "SeriesNumber" in text and "series=" in text
    for info in list_series(messy):
        assert info.uid in text


def test_choose_by_uid_or_number_ignores_file_order(messy):
    infos = {s.n_slices: s for s in list_series(messy)}
    big = read_dicom_series(messy, series=infos[20].uid)
    small = read_dicom_series(messy, series=2)  # SeriesNumber of the liver CT
    plain = read_dicom_series(CT_DIR)
    assert np.array_equal(big.array, plain.array)
    assert np.allclose(big.affine, plain.affine)
    assert big.meta["series_uid"] == plain.meta["series_uid"]  # generated UIDs are deterministic
    assert np.array_equal(small.array, read_dicom_series(LIVER_DIR).array)
    with pytest.raises(InputError, match="no series with UID or number '9.9.9'"):
        read_dicom_series(messy, series="9.9.9")


def _by_position(paths):
    return sorted(paths, key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))


def test_missing_slice_is_reported(tmp_path):
    folder = tmp_path / "gappy"
    folder.mkdir()
    ordered = _by_position(sorted(CT_DIR.iterdir()))
    for n, src in enumerate(ordered):
        if n != 7:
            shutil.copy(src, folder / f"im{n:02d}")
    with pytest.raises(InputError) as err:
        read_dicom_series(folder)
    text = str(err.value)
    assert str(folder) in text and "gap of 4.000 mm" in text and "about 1 missing slice" in text
    assert "-792.500 and -788.500 mm" in text  # the two positions around the hole (-790.5 is gone)


def _copy_liver_ct(folder: Path, edit=None) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for n, src in enumerate(_by_position(LIVER_CT)):
        ds = pydicom.dcmread(src)
        if edit:
            edit(n, ds)
        path = folder / f"s{n}.dcm"
        ds.save_as(path)
        out.append(path)
    return out


def test_gantry_tilt_is_reported(tmp_path):
    def tilt(n, ds):
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y + n * math.tan(math.radians(15)), z]
        ds.GantryDetectorTilt = 15

    _copy_liver_ct(tmp_path / "tilt", tilt)
    with pytest.raises(InputError, match=r"gantry/detector tilt of about 15.00 degrees"):
        read_dicom_series(tmp_path / "tilt")


def test_duplicate_positions_are_reported(tmp_path):
    def same(n, ds):
        ds.ImagePositionPatient = [-235.2, -226.8, -127.69 if n else -127.69]

    _copy_liver_ct(tmp_path / "dup", same)
    with pytest.raises(InputError, match="two images at the same slice position"):
        read_dicom_series(tmp_path / "dup")


def test_unsupported_compression_names_the_syntax(tmp_path):
    folder = tmp_path / "jpegls"
    folder.mkdir()
    ds = pydicom.dcmread(sorted(CT_DIR.iterdir())[0])
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.80"  # claims JPEG-LS; no decoder installed
    ds.save_as(folder / "one.dcm", enforce_file_format=True)
    with pytest.raises(InputError) as err:
        read_dicom_series(folder)
    assert "JPEG-LS Lossless" in str(err.value) and "1.2.840.10008.1.2.4.80" in str(err.value)
    assert "one.dcm" in str(err.value)


def _pet_edit(n, ds, weight=70, decay="START"):
    ds.Modality = "PT"
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.128"
    ds.Units = "BQML"
    ds.DecayCorrection = decay
    ds.RescaleSlope = 2
    ds.RescaleIntercept = 0
    if weight is not None:
        ds.PatientWeight = weight
    ds.SeriesDate = ds.AcquisitionDate = "20240101"
    ds.SeriesTime = "110000"
    ds.AcquisitionTime = "110500"
    item = pydicom.Dataset()
    item.RadionuclideTotalDose = 370e6
    item.RadionuclideHalfLife = 6586.2
    item.RadiopharmaceuticalStartTime = "100000"
    ds.RadiopharmaceuticalInformationSequence = pydicom.Sequence([item])


def test_pet_body_weight_suv(tmp_path):
    _copy_liver_ct(tmp_path / "pet", _pet_edit)
    pet = read_dicom_series(tmp_path / "pet")
    stored = np.stack([pydicom.dcmread(p).pixel_array.T for p in _by_position(LIVER_CT)], -1).astype(np.float64)
    factor = 70_000 / (370e6 * math.exp(-math.log(2) * 3600 / 6586.2))  # series start 1 h after injection
    assert pet.modality == "PT" and pet.meta["units"] == "SUVbw"
    assert np.allclose(pet.array, stored * 2 * factor, rtol=1e-5)


def test_pet_missing_tag_is_named(tmp_path):
    _copy_liver_ct(tmp_path / "pet", lambda n, ds: _pet_edit(n, ds, weight=None))
    with pytest.raises(InputError, match=r"PatientWeight \(0010,1030\) is missing"):
        read_dicom_series(tmp_path / "pet")


def test_mr_is_kept_as_stored(tmp_path):
    def mr(n, ds):
        ds.Modality = "MR"
        ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.4"

    _copy_liver_ct(tmp_path / "mr", mr)
    image = read_dicom_series(tmp_path / "mr")
    stored = np.stack([pydicom.dcmread(p).pixel_array.T for p in _by_position(LIVER_CT)], -1)
    assert image.array.dtype == stored.dtype
    assert np.array_equal(image.array, stored)


def test_empty_and_missing_folders(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("hello")
    with pytest.raises(InputError, match="no DICOM files found"):
        read_dicom_series(tmp_path / "empty")
    with pytest.raises(InputError, match="folder not found"):
        read_dicom_series(tmp_path / "nope")

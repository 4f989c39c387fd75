"""Property-based fuzzing of hostile inputs (Hypothesis): NIfTI headers, DICOM series, ZIP
archives and experiment files. Every input must either load into a sane result or raise one
Delineo error: a single sentence that names the file. Anything else (another exception type,
a traceback, a hang, an allocation of the claimed size) is a defect.

The default run is bounded (about 30 s in all on a busy 2-core machine); ``make soak`` runs the
same properties with many more examples (``@pytest.mark.soak``). Each property counts the inputs
it tried and prints the figure (``-s`` shows it)."""

from __future__ import annotations

import gzip
import io
import os
import resource
import shutil
import tempfile
import zipfile
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from delineo.errors import DelineoError
from delineo.io.archive import ArchiveLimits, extract_archive
from delineo.io.files import read_image

TRIED: Counter = Counter()
OUTCOMES: Counter = Counter()

FAST = settings(max_examples=60, deadline=20_000, suppress_health_check=list(HealthCheck), derandomize=True)
SOAK = settings(max_examples=500, deadline=60_000, suppress_health_check=list(HealthCheck))


def _one_sentence(err: Exception, path: Path) -> None:
    msg = str(err)
    assert isinstance(err, DelineoError), f"{type(err).__name__}: {msg}"
    assert str(path) in msg or path.name in msg, msg
    assert "\n" not in msg and msg.endswith((".", ")")), msg


def _memory_guard():
    """Cap this process's address space growth for the duration of one example is not possible
    in-process; instead record the peak RSS before/after so a blow-up fails the property."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# --------------------------------------------------------------------------------------- NIfTI
NIFTI_DTYPES = [2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024, 1280, 1536, 1792, 2048, 2304, 0, 7, 99, 4000]
FLOATS = st.one_of(st.floats(allow_nan=True, allow_infinity=True, width=32),
                   st.sampled_from([0.0, -1.0, 1e-30, 1e30, float("nan"), float("inf")]))


@st.composite
def nifti_bytes(draw):
    shape = draw(st.lists(st.integers(1, 7), min_size=2, max_size=4))
    data = np.arange(int(np.prod(shape)), dtype=np.float32).reshape(shape)
    img = nib.Nifti1Image(data, np.diag([1.0, 1.2, 2.0, 1.0]))
    hdr = img.header
    raw = bytearray(hdr.binaryblock) + b"\0" * 4 + data.tobytes(order="F")
    h = nib.Nifti1Header(bytes(raw[:348]), check=False)
    edits = draw(st.lists(st.sampled_from(["dim", "dim0", "datatype", "pixdim", "vox_offset", "qform", "sform",
                                           "codes", "sizeof_hdr", "magic", "scl", "affine_nonortho",
                                           "disagree"]), max_size=4, unique=True))
    for e in edits:
        if e == "dim":
            dim = h["dim"].copy()
            i = draw(st.integers(1, 3))
            dim[i] = draw(st.sampled_from([0, -1, 30000, 32767, -32768, 2, 1]))
            h["dim"] = dim
        elif e == "dim0":
            dim = h["dim"].copy()
            dim[0] = draw(st.sampled_from([0, 1, 5, 7, 8, 9, -1, 100]))
            h["dim"] = dim
        elif e == "datatype":
            code = draw(st.sampled_from(NIFTI_DTYPES))
            h["datatype"] = code
            h["bitpix"] = draw(st.sampled_from([8, 16, 32, 64, 128, 0]))
        elif e == "pixdim":
            pix = h["pixdim"].copy()
            pix[1:4] = [draw(FLOATS) for _ in range(3)]
            h["pixdim"] = pix
        elif e == "vox_offset":
            h["vox_offset"] = draw(st.sampled_from([0.0, 100.0, 352.0, 353.0, 1e9, -5.0, float("nan")]))
        elif e == "qform":
            for k in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x"):
                h[k] = draw(FLOATS)
        elif e == "sform":
            row = draw(st.sampled_from(["srow_x", "srow_y", "srow_z"]))
            h[row] = [draw(FLOATS) for _ in range(4)]
        elif e == "codes":
            h["qform_code"] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, -1, 100]))
            h["sform_code"] = draw(st.sampled_from([0, 1, 2, 3, 4, 5, -1, 100]))
        elif e == "sizeof_hdr":
            h["sizeof_hdr"] = draw(st.sampled_from([0, 540, 347, 349, -1]))
        elif e == "magic":
            h["magic"] = draw(st.sampled_from([b"n+1", b"ni1", b"n+2", b"xxx", b""]))
        elif e == "scl":
            h["scl_slope"], h["scl_inter"] = draw(FLOATS), draw(FLOATS)
        elif e == "affine_nonortho":
            h["srow_x"] = [1.0, 0.9, 0.0, 0.0]
            h["srow_y"] = [0.0, 1.0, 0.9, 0.0]
            h["sform_code"] = 1
        elif e == "disagree":
            h["qform_code"], h["sform_code"] = 1, 1
            h["srow_x"] = [-3.0, 0.0, 0.0, 50.0]
    raw[:348] = h.binaryblock
    cut = draw(st.one_of(st.none(), st.integers(0, len(raw))))
    if cut is not None:
        raw = raw[:cut]
    compress = draw(st.booleans())
    return (gzip.compress(bytes(raw)) if compress else bytes(raw)), compress, edits, cut


def _check_nifti(blob: bytes, compressed: bool, tmp: Path) -> str:
    path = tmp / ("case.nii.gz" if compressed else "case.nii")
    path.write_bytes(blob)
    before = _memory_guard()
    try:
        image = read_image(path)
    except Exception as exc:  # noqa: BLE001 - the property decides what is acceptable
        _one_sentence(exc, path)
        return "refused"
    finally:
        grown_kb = _memory_guard() - before
        assert grown_kb < 2_000_000, f"peak memory grew by {grown_kb} kB on a {len(blob)}-byte file"
    assert image.array.ndim == 3 and all(s >= 1 for s in image.array.shape)
    assert np.all(np.isfinite(image.affine)), image.affine
    assert np.all(image.spacing > 0), image.spacing
    assert image.array.dtype.kind in "biuf", image.array.dtype
    return "loaded"


def _run_nifti(case) -> None:
    blob, compressed, edits, cut = case
    with tempfile.TemporaryDirectory() as tmp:
        outcome = _check_nifti(blob, compressed, Path(tmp))
    TRIED["nifti"] += 1
    OUTCOMES[f"nifti {outcome}"] += 1


@FAST
@given(nifti_bytes())
def test_fuzz_nifti_headers(case):
    _run_nifti(case)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@SOAK
@given(nifti_bytes())
def test_fuzz_nifti_headers_soak(case):
    _run_nifti(case)


# --------------------------------------------------------------------------------------- DICOM
def _series(folder: Path, n: int = 4) -> list[Path]:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = CTImageStorage, generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        p = folder / f"{k}.dcm"
        ds = FileDataset(str(p), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID = "Fuzz^Case", "F1"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 1, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 2.0
        ds.Rows, ds.Columns = 8, 6
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = (np.arange(48, dtype=np.int16) + k).tobytes()
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


DICOM_EDITS = ["no_pixels", "no_position", "no_orientation", "no_spacing", "mixed_series", "duplicate_position",
               "unequal_spacing", "jpeg_syntax", "garbage_ds", "rows_mismatch", "bits", "truncate", "nan_position",
               "zero_spacing", "colour", "orientation_degenerate", "one_slice_only", "no_sop", "rescale_nan"]


@st.composite
def dicom_edits(draw):
    return draw(st.lists(st.tuples(st.sampled_from(DICOM_EDITS), st.integers(0, 3)), min_size=1, max_size=3))


def _apply_dicom(paths: list[Path], edits) -> None:
    import pydicom
    from pydicom.uid import JPEGBaseline8Bit, generate_uid

    for edit, k in edits:
        p = paths[k]
        if not p.exists():  # removed by an earlier one_slice_only
            continue
        if edit == "truncate":
            p.write_bytes(p.read_bytes()[: 200 + 40 * k])
            continue
        if edit == "one_slice_only":
            for q in paths[1:]:
                q.unlink(missing_ok=True)
            continue
        try:
            ds = pydicom.dcmread(p)
        except Exception:  # noqa: BLE001 - an earlier edit truncated it
            continue
        try:
            _edit(ds, edit, k, generate_uid, JPEGBaseline8Bit)
        except (AttributeError, KeyError):  # the attribute was already removed by an earlier edit
            continue
        try:
            ds.save_as(p)
        except Exception:  # noqa: BLE001 - pydicom refuses to write some edits: the file stays valid
            continue
        # values pydicom will not write are patched into the bytes (same length)
        p.write_bytes(p.read_bytes().replace(b"9.9\\1.0", b"abc\\1.0").replace(b"777.7", b"  nan"))


def _edit(ds, edit: str, k: int, generate_uid, JPEGBaseline8Bit) -> None:
    """One hostile change of a dataset; invalid values are written as raw strings."""
    import pydicom

    pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    if True:
        if edit == "no_pixels":
            del ds.PixelData
        elif edit == "no_position":
            del ds.ImagePositionPatient
        elif edit == "no_orientation":
            del ds.ImageOrientationPatient
        elif edit == "no_spacing":
            del ds.PixelSpacing
        elif edit == "mixed_series":
            ds.SeriesInstanceUID = generate_uid()
        elif edit == "duplicate_position":
            ds.ImagePositionPatient = [0.0, 0.0, 0.0]
        elif edit == "unequal_spacing":
            ds.ImagePositionPatient = [0.0, 0.0, 2.0 * k + 0.7]
        elif edit == "jpeg_syntax":
            ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
        elif edit == "garbage_ds":
            ds.PixelSpacing = ["9.9", "1.0"]  # becomes "abc" in the written bytes
        elif edit == "rows_mismatch":
            ds.Rows = 9
        elif edit == "bits":
            ds.BitsAllocated = 12
        elif edit == "nan_position":
            ds.ImagePositionPatient = ["777.7", 0, 0]  # becomes "  nan" in the written bytes
        elif edit == "zero_spacing":
            ds.PixelSpacing = [0.0, 0.0]
        elif edit == "colour":
            ds.SamplesPerPixel = 3
        elif edit == "orientation_degenerate":
            ds.ImageOrientationPatient = [1, 0, 0, 1, 0, 0]
        elif edit == "no_sop":
            del ds.SOPInstanceUID
        elif edit == "rescale_nan":
            ds.RescaleSlope = "nan"


def _run_dicom(edits) -> None:
    from delineo.io.dicom import read_dicom_series

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "series"
        paths = _series(folder)
        _apply_dicom(paths, edits)
        try:
            image = read_dicom_series(folder)
        except Exception as exc:  # noqa: BLE001
            msg = str(exc)
            assert isinstance(exc, DelineoError), f"{edits}: {type(exc).__name__}: {msg}"
            assert str(folder) in msg, f"{edits}: {msg}"
            assert "\n" not in msg, msg
            OUTCOMES["dicom refused"] += 1
        else:
            assert np.all(np.isfinite(image.affine)) and np.all(image.spacing > 0), (edits, image.affine)
            assert np.isfinite(image.array).all(), edits
            OUTCOMES["dicom loaded"] += 1
    TRIED["dicom"] += 1


@FAST
@given(dicom_edits())
def test_fuzz_dicom_series(edits):
    _run_dicom(edits)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@SOAK
@given(dicom_edits())
def test_fuzz_dicom_series_soak(edits):
    _run_dicom(edits)


# --------------------------------------------------------------------------------------- ZIP
NAME_PARTS = st.sampled_from(["a", "b.dcm", "..", ".", "", "/", "\\", "C:", "sub", "\x00", "é", "a" * 200])


@st.composite
def zip_members(draw):
    members = []
    for _ in range(draw(st.integers(1, 5))):
        name = "/".join(draw(st.lists(NAME_PARTS, min_size=1, max_size=4)))
        size = draw(st.sampled_from([0, 10, 5000, 3_000_000]))
        members.append((name, size, draw(st.booleans())))  # (name, size, compressible)
    return members


def _run_zip(members) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        arch = tmp / "up.zip"
        with zipfile.ZipFile(arch, "w", zipfile.ZIP_DEFLATED) as zf:
            for name, size, compressible in members:
                try:
                    zf.writestr(name or "x", bytes(size) if compressible else os.urandom(size))
                except Exception:  # noqa: BLE001 - zipfile itself cannot write some names (e.g. NUL)
                    pass
        dest = tmp / "box" / "out"
        limits = ArchiveLimits(max_total_bytes=4_000_000, max_ratio=100.0)
        try:
            extract_archive(arch, dest, limits)
        except Exception as exc:  # noqa: BLE001
            _one_sentence(exc, arch)
            assert not dest.exists() and list((tmp / "box").iterdir()) == []
            OUTCOMES["zip refused"] += 1
        else:
            root = dest.resolve()
            for p in dest.rglob("*"):
                assert root in p.resolve().parents and not p.is_symlink(), p
            OUTCOMES["zip extracted"] += 1
        outside = {p.name for p in tmp.iterdir()}
        assert outside <= {"up.zip", "box"}, outside
    TRIED["zip"] += 1


@FAST
@given(zip_members())
def test_fuzz_zip_archives(members):
    _run_zip(members)


@pytest.mark.soak
@pytest.mark.timeout(3600)
@SOAK
@given(zip_members())
def test_fuzz_zip_archives_soak(members):
    _run_zip(members)


# --------------------------------------------------------------------------------------- YAML
TAGS = ["!!python/object/apply:os.system", "!!python/object/new:os.system", "!!python/name:os.system",
        "!!python/module:os", "!!python/object:builtins.object", "!!binary", "!!set", "!custom", "!!timestamp",
        "!!omap", "!!python/tuple"]


@st.composite
def tagged_yaml(draw, marker: str = "MARKER"):
    tag = draw(st.sampled_from(TAGS))
    where = draw(st.sampled_from(["name", "train.epochs", "model", "data.source.path", "top"]))
    value = f"{tag} [\"touch {marker}\"]" if "python" in tag else f"{tag} x"
    return tag, where, value


def _run_yaml(case) -> None:
    from delineo.config import load_config

    tag, where, value = case
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        marker = tmp / "MARKER"
        value = value.replace("MARKER", str(marker))
        base = {"name": "fuzz", "data": {"source": {"type": "msd", "path": str(tmp)}}, "train": {"epochs": 1}}
        text = yaml.safe_dump(base)
        if where == "top":
            text += f"evil: {value}\n"
        elif where == "name":
            text = text.replace("name: fuzz", f"name: {value}")
        elif where == "train.epochs":
            text = text.replace("epochs: 1", f"epochs: {value}")
        elif where == "model":
            text += f"model: {value}\n"
        else:
            text = text.replace(f"path: {tmp}", f"path: {value}")
        exp = tmp / "exp.yaml"
        exp.write_text(text)
        cwd = os.getcwd()
        os.chdir(tmp)  # a relative `touch MARKER` would land here
        try:
            load_config(exp)
        except Exception as exc:  # noqa: BLE001
            _one_sentence(exc, exp)
            OUTCOMES["yaml refused"] += 1
        else:
            OUTCOMES["yaml loaded"] += 1  # only safe tags (e.g. !!timestamp in a str field) may load
            assert "python" not in tag, text
        finally:
            os.chdir(cwd)
        assert not marker.exists() and not (tmp / "MARKER").exists()
    TRIED["yaml"] += 1


@FAST
@given(tagged_yaml())
def test_fuzz_yaml_tags(case):
    _run_yaml(case)


@pytest.fixture(scope="module", autouse=True)
def fuzz_summary():
    """Prints the figures of this module's fuzzing when it ends (run with -s to see them)."""
    yield
    print(f"\nfuzz inputs tried: {dict(TRIED)}; outcomes: {dict(OUTCOMES)}")

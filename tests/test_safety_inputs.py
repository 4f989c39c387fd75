"""Strange files a hospital sends, through ``delineo predict`` / ``explain`` on a real (tiny)
trained 3D model: each is refused with one sentence naming the file and the problem, or handled
so that the output has exactly the input's shape; config keys act or are refused."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import yaml

from delineo.errors import ConfigError, InputError
from delineo.io.files import read_image

from .conftest import phantom_experiment, write_msd


def cli(*args: str, mem_gb: float = 4.0) -> subprocess.CompletedProcess:
    """Run the CLI under an address-space limit: a header that makes it allocate the claimed
    volume fails the test instead of the machine."""
    def limit():
        lim = int(mem_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (lim, lim))

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "delineo.cli", *args], capture_output=True, text=True, env=env,
                          timeout=300, preexec_fn=limit)


def cli_here(*args: str) -> subprocess.CompletedProcess:
    """The same command in this process (no interpreter start-up: these tests stay fast)."""
    import contextlib
    import io

    from delineo.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse errors
            code = int(exc.code or 0)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def one_sentence(res: subprocess.CompletedProcess, *needles: str) -> str:
    assert res.returncode == 2, res.stdout + res.stderr
    lines = [l for l in res.stderr.strip().splitlines() if "error:" in l]
    assert len(lines) == 1 and "Traceback" not in res.stderr, res.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A 3D U-Net trained for a few iterations, with infer.tta and an explain: section."""
    root = tmp_path_factory.mktemp("inputs")
    data = write_msd(root / "data", n=6)
    exp = phantom_experiment(data, epochs=1, iterations_per_epoch=3)
    exp["sampling"] = {"mode": "3d", "patch_size": [16, 16, 16], "batch_size": 2}
    exp["augment"] = {"flip": {"p": 0.5, "axes": [0, 1, 2]}}
    exp["infer"] = {"tta": True}
    exp["explain"] = {"method": "saliency", "target": "class"}
    (root / "exp.yaml").write_text(yaml.safe_dump(exp))
    res = cli_here("train", str(root / "exp.yaml"), "--runs", str(root / "runs"), "-q", "--no-evaluate")
    assert res.returncode == 0, res.stderr
    return root / "runs" / "phantom" / "fold_0"


def huge_header(path: Path, shape=(30000, 30000, 30000)) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    hdr.set_qform(np.eye(4), code=1)
    hdr.set_sform(np.eye(4), code=1)
    blob = hdr.binaryblock + b"\0" * 4 + os.urandom(1000 - 352)
    if path.name.endswith(".gz"):
        import gzip

        blob = gzip.compress(blob)
    path.write_bytes(blob)
    return path


@pytest.mark.parametrize("name", ["huge.nii", "huge.nii.gz"])
def test_huge_header_refused_before_allocating(model: Path, tmp_path: Path, name: str):
    src = huge_header(tmp_path / name)
    t0 = time.perf_counter()
    args = ("predict", str(model), str(src), str(tmp_path / "out.nii.gz"))
    # the uncompressed case runs in its own process under a 3 GB address-space limit
    line = one_sentence(cli(*args, mem_gb=3) if name == "huge.nii" else cli_here(*args),
                        name, "30000x30000x30000", "108.0 TB", f"{src.stat().st_size} bytes")
    assert time.perf_counter() - t0 < 60
    assert not (tmp_path / "out.nii.gz").exists(), line


def test_header_claiming_more_than_memory_is_refused(tmp_path: Path):
    # a sparse file as large as its header claims (no disk used), larger than the machine's memory
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    side = int(np.ceil((ram / 4) ** (1 / 3)))  # uint8 voxels: side^3 > ram / 4 ... times 8 below
    shape = (2 * side, 2 * side, 2 * side)
    src = huge_header(tmp_path / "big.nii", shape=shape)
    with open(src, "r+b") as fh:
        fh.truncate(352 + 4 * int(np.prod(shape, dtype=np.int64)))
    with pytest.raises(InputError, match=r"big\.nii: the header claims .* more than this machine's memory"):
        read_image(src)


def test_2d_nifti_into_3d_model_keeps_the_input_shape(model: Path, tmp_path: Path):
    rng = np.random.default_rng(0)
    img = (rng.normal(10, 0.3, (35, 51)) + 2 * (np.hypot(*np.indices((35, 51)) - np.array([17, 25])[:, None, None]) < 8))
    affine = np.diag([0.8, 0.9, 2.0, 1.0])
    nib.save(nib.Nifti1Image(img.astype(np.float32), affine), tmp_path / "slice.nii.gz")
    res = cli_here("predict", str(model), str(tmp_path / "slice.nii.gz"), str(tmp_path / "mask.nii.gz"), "-q")
    assert res.returncode == 0, res.stderr
    out = nib.load(tmp_path / "mask.nii.gz")
    assert out.shape == (35, 51)
    assert np.allclose(out.affine, affine)
    # the same for NRRD (ITK 2D)
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(img.T.astype(np.float32).T.copy())  # (rows=35, cols=51) -> size (51, 35)
    itk.SetSpacing((0.9, 0.8))
    sitk.WriteImage(itk, str(tmp_path / "slice.nrrd"))
    res = cli_here("predict", str(model), str(tmp_path / "slice.nrrd"), str(tmp_path / "mask.nrrd"), "-q")
    assert res.returncode == 0, res.stderr
    back = sitk.ReadImage(str(tmp_path / "mask.nrrd"))
    assert back.GetDimension() == 2 and back.GetSize() == itk.GetSize() and back.GetSpacing() == (0.9, 0.8)


def _raw_nifti(path: Path, zooms, qcode: int, scode: int, shape=(24, 28, 20)) -> Path:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(np.float32)
    pix = hdr["pixdim"].copy()
    pix[1:4] = zooms
    hdr["pixdim"] = pix
    hdr["qform_code"], hdr["sform_code"] = qcode, scode
    hdr["vox_offset"] = 352
    data = np.random.default_rng(0).normal(10, 1, shape).astype(np.float32)
    path.write_bytes(hdr.binaryblock + b"\0" * 4 + data.tobytes(order="F"))
    return path


def test_zero_voxel_sizes_without_qform_or_sform_refused(model: Path, tmp_path: Path):
    src = _raw_nifti(tmp_path / "nogeom.nii", (0, 0, 0), 0, 0)
    one_sentence(cli_here("predict", str(model), str(src), str(tmp_path / "out.nii.gz")), "nogeom.nii",
                 "voxel sizes [0.0, 0.0, 0.0]", "no qform or sform", "geometry is undefined")
    assert not (tmp_path / "out.nii.gz").exists()
    with pytest.raises(InputError, match="with the qform"):
        read_image(_raw_nifti(tmp_path / "q.nii", (0, 1, 1), 1, 0))
    with pytest.raises(InputError, match="voxel sizes"):
        read_image(_raw_nifti(tmp_path / "nan.nii", (np.nan, 1, 1), 0, 0))


def test_no_qform_or_sform_with_sizes_warns(model: Path, tmp_path: Path, caplog):
    src = _raw_nifti(tmp_path / "noorient.nii", (1.0, 1.0, 1.5), 0, 0)
    with caplog.at_level("WARNING"):
        image = read_image(src)
    assert np.allclose(image.spacing, [1.0, 1.0, 1.5])
    assert any("no qform or sform" in r.getMessage() and "noorient.nii" in r.getMessage() for r in caplog.records)
    res = cli_here("predict", str(model), str(src), str(tmp_path / "out.nii.gz"), "-q")
    assert res.returncode == 0 and "no qform or sform" in res.stderr, res.stderr


def test_infer_tta_in_the_experiment_is_honoured(model: Path, tmp_path: Path):
    src = model.parents[2] / "data" / "imagesTr" / "ph_001_0000.nii.gz"
    probs = {}
    for flag in ("", "--tta", "--no-tta"):
        out = tmp_path / f"m{flag or '_default'}.nii.gz"
        res = cli_here("predict", str(model), str(src), str(out), "--probabilities", "-q", *([flag] if flag else []))
        assert res.returncode == 0, res.stderr
        probs[flag] = np.asarray(nib.load(str(out).replace(".nii.gz", "_probabilities.nii.gz")).dataobj)
    assert np.array_equal(probs[""], probs["--tta"])  # infer.tta: true in the experiment
    assert not np.allclose(probs["--tta"], probs["--no-tta"])  # and TTA changes the result


def test_explain_section_acts_and_misspelt_key_is_refused(model: Path, tmp_path: Path):
    src = model.parents[2] / "data" / "imagesTr" / "ph_001_0000.nii.gz"
    res = cli_here("explain", str(model), str(src), "--label", "1", "--out", str(tmp_path), "-q")
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "ph_001_0000_saliency.nii.gz").is_file()  # explain.method from the experiment
    res = cli_here("explain", str(model), str(src), "--label", "1", "--method", "gradcam", "--layer", "encoders.1",
              "--out", str(tmp_path), "-q")
    assert res.returncode == 0 and (tmp_path / "ph_001_0000_gradcam.nii.gz").is_file(), res.stderr
    from delineo.config import config_from_dict

    exp = yaml.safe_load((model.parents[2] / "exp.yaml").read_text())
    exp["explain"] = {"methd": "saliency"}
    with pytest.raises(ConfigError, match="methd"):
        config_from_dict(exp)


def _dicom_folder(tmp_path: Path) -> Path:
    """A small CT series with patient identity, written with pydicom."""
    import pydicom
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = tmp_path / "dicom"
    folder.mkdir()
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    rng = np.random.default_rng(1)
    for k in range(20):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = FileDataset(str(folder / f"{k}.dcm"), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = CTImageStorage, meta.MediaStorageSOPInstanceUID
        ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Doe^Jane", "P-12345", "19700101"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 3, k + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.ImagePositionPatient = [0.0, 0.0, 1.5 * k]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 1.5
        ds.Rows, ds.Columns = 28, 24
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope = 0, 1
        ds.PixelData = rng.integers(0, 100, (28, 24)).astype(np.int16).tobytes()
        ds.save_as(folder / f"{k}.dcm", enforce_file_format=True)
    return folder


def test_sidecar_has_no_patient_identity_by_default(model: Path, tmp_path: Path):
    src = _dicom_folder(tmp_path)
    res = cli_here("predict", str(model), str(src), str(tmp_path / "mask.nii.gz"), "-q")
    assert res.returncode == 0, res.stderr
    text = (tmp_path / "mask.json").read_text()
    side = json.loads(text)
    assert side["source"]["SeriesInstanceUID"] and side["patient_data"] is False
    for needle in ("Doe", "P-12345", "19700101", str(src)):
        assert needle not in text, needle
    res = cli_here("predict", str(model), str(src), str(tmp_path / "mask2.nii.gz"), "--with-patient-data", "-q")
    assert res.returncode == 0, res.stderr
    side = json.loads((tmp_path / "mask2.json").read_text())
    assert "Doe^Jane" in json.dumps(side) and "P-12345" in json.dumps(side) and side["patient_data"] is True
    res = cli_here("predict", str(model), str(src), str(tmp_path / "mask3.nii.gz"), "--anonymise", "-q")
    assert res.returncode == 0 and "source" not in json.loads((tmp_path / "mask3.json").read_text())

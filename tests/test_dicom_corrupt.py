"""Corrupt DICOM input, each refused in one sentence that names the file and the actual problem,
not a later symptom: truncated pixel data (the file ends early), pixel data that does not fit
Rows x Columns x BitsAllocated, an invalid BitsAllocated, a truncated header (it once looked like
a second series), a non-image SOP class carrying pixels (it was read as an image), a folder
holding only a DICOMDIR index, and a DICOMDIR or suffix-less DICOM file given as the input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from delineo.errors import InputError
from delineo.io.dicom import list_series, read_dicom_series
from delineo.io.files import read_image

from .test_fuzz_inputs import _series


def _edit(path: Path, **values) -> None:
    ds = pydicom.dcmread(path)
    for key, value in values.items():
        if value is None:
            delattr(ds, key)
        else:
            setattr(ds, key, value)
    ds.save_as(path)


def _refused(target: Path, *needles: str) -> str:
    with pytest.raises(InputError) as exc:
        read_image(target)
    msg = str(exc.value)
    assert "\n" not in msg and msg.endswith("."), msg
    for needle in needles:
        assert needle in msg, msg
    return msg


def test_truncated_pixel_data_is_named_truncated(tmp_path):
    paths = _series(tmp_path / "s")
    paths[1].write_bytes(paths[1].read_bytes()[:-30])
    msg = _refused(tmp_path / "s", str(paths[1]), "truncated", "66 of 96 bytes")
    assert "Bits" not in msg, msg  # not pydicom's guess about group 0028
    _refused(paths[1], str(paths[1]), "truncated")  # the single file too


@pytest.mark.parametrize("bits, needle", [
    (32, "BitsAllocated 32 needs 192 bytes, the pixel data holds 96 (as for BitsAllocated 16)"),
    (8, "BitsAllocated 8 is less than BitsStored 16"),
    (12, "BitsAllocated 12 is not valid (1, 8, 16, 32 or 64)"),
])
def test_wrong_bits_allocated_names_the_attribute(tmp_path, bits, needle):
    paths = _series(tmp_path / "s")
    _edit(paths[2], BitsAllocated=bits)
    _refused(tmp_path / "s", str(paths[2]), needle)


def test_pixel_data_too_short_for_rows_and_columns(tmp_path):
    paths = _series(tmp_path / "s")
    for p in paths:
        _edit(p, Rows=16)
    _refused(tmp_path / "s", str(paths[0]), "Rows 16 x Columns 6", "needs 192 bytes, the pixel data holds 96")


def test_missing_rows_columns_and_position_name_the_attribute(tmp_path):
    for key in ("Rows", "Columns", "ImagePositionPatient"):
        paths = _series(tmp_path / key)
        _edit(paths[2], **{key: None})
        _refused(tmp_path / key, str(paths[2]), f"DICOM attribute {key}", "is missing")


def test_truncated_header_is_not_taken_for_a_second_series(tmp_path):
    paths = _series(tmp_path / "s")
    paths[1].write_bytes(paths[1].read_bytes()[:300])
    msg = _refused(tmp_path / "s", str(paths[1]), "truncated DICOM file")
    assert "image series" not in msg, msg
    assert len(list_series(tmp_path / "s")) == 1  # listing still works, the broken file is left out


def test_a_file_cut_anywhere_is_named_truncated(tmp_path):
    """Cut one slice at every 11th byte after the preamble: each read names that file as
    truncated (inside an attribute, between two, before the pixels, inside them), never a
    symptom such as a second series, a missing attribute or a pixel-count mismatch."""
    src = tmp_path / "src"
    paths = _series(src)
    full = paths[1].read_bytes()
    tried = 0
    for cut in range(132, len(full), 11):
        folder = tmp_path / f"cut{cut}"
        shutil.copytree(src, folder)
        (folder / "1.dcm").write_bytes(full[:cut])
        msg = _refused(folder, str(folder / "1.dcm"))
        assert "truncated DICOM file" in msg, (cut, msg)
        shutil.rmtree(folder)
        tried += 1
    assert tried >= 80


def test_non_image_sop_class_with_pixels_is_not_read_as_an_image(tmp_path):
    paths = _series(tmp_path / "s")
    for p in paths:
        _edit(p, SOPClassUID="1.2.840.10008.5.1.4.1.1.66")  # Raw Data Storage, modality still CT
    _refused(tmp_path / "s", str(tmp_path / "s"), "no image series", "Raw Data Storage")
    _refused(paths[0], str(paths[0]), "Raw Data Storage", "not an image")


def _dicomdir(paths: list[Path], out: Path) -> Path:
    from pydicom.fileset import FileSet

    fs = FileSet()
    for p in paths:
        _edit(p, StudyDate="20200101", StudyTime="120000", StudyID="1")
        fs.add(p)
    fs.write(out)
    return out / "DICOMDIR"


def test_dicomdir_alone_and_dicomdir_as_input(tmp_path):
    paths = _series(tmp_path / "src")
    index = _dicomdir(paths, tmp_path / "export")
    image = read_dicom_series(tmp_path / "export")  # index plus files: found by scanning
    assert image.array.shape == (6, 8, 4)
    _refused(index, str(index), "DICOMDIR index", str(index.parent))
    member = next(p for p in (tmp_path / "export").rglob("IM*") if p.is_file())
    _refused(member, str(member), "DICOM file without a .dcm suffix", "series folder")
    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(index, alone / "DICOMDIR")
    _refused(alone, str(alone), "only a DICOMDIR index", "4 referenced file(s)")


def test_predict_names_the_file_and_writes_nothing(tmp_path, capsys):
    """The same sentence through ``delineo predict``, with exit status 2 and no output."""
    from delineo.cli import main

    from .conftest import SAMPLE  # noqa: F401  (the embedded sample exists on a fresh clone)

    paths = _series(tmp_path / "s")
    paths[1].write_bytes(paths[1].read_bytes()[:-30])
    model = _tiny_model(tmp_path)
    code = main(["predict", str(model), str(tmp_path / "s"), str(tmp_path / "out"), "-q"])
    err = capsys.readouterr().err
    assert code == 2 and str(paths[1]) in err and "truncated" in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def _tiny_model(tmp_path: Path) -> Path:
    """A one-channel 2D U-Net trained for one iteration on phantoms (predict needs a model)."""
    from delineo.config import config_from_dict
    from delineo.train.loop import train

    from .conftest import phantom_experiment, write_msd

    data = write_msd(tmp_path / "data", n=5)
    exp = phantom_experiment(data, epochs=1, iterations_per_epoch=1, val_every=100)
    return train(config_from_dict(exp), tmp_path / "runs", 0, progress=False)


def test_a_valid_series_still_loads(tmp_path):
    _series(tmp_path / "s")
    image = read_image(tmp_path / "s")
    assert image.array.shape == (6, 8, 4) and np.isfinite(image.array).all()

"""Recipe formats with known answers: SIIM run-length masks (hand-worked strings, the
challenge's own reference algorithm, merged rows, Kaggle CSV), PNG/JPEG, single-image 2D DICOM
(MONOCHROME1 inversion, pixel spacing, ViewPosition) and .npy, each read through read_image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from delineo.errors import InputError
from delineo.io import read_image, write_image
from delineo.io.files import image_suffix, is_image_file
from delineo.io.image import Image
from delineo.io.planar import invert_monochrome1, planar_affine
from delineo.io.rle import decode, encode, read_rle_csv, write_rle_csv

#: 3 rows x 4 columns; column-major flattening gives 0 0 0 | 1 1 0 | 0 0 0 | 0 1 1
MASK = np.array([[0, 1, 0, 0],
                 [0, 1, 0, 1],
                 [0, 0, 0, 1]], dtype=np.uint8)


def siim_mask2rle(img: np.ndarray, width: int, height: int) -> str:
    """The challenge's reference encoder (mask_functions.py of the SIIM-ACR starter kit), called
    as the kit does, on the transposed 0/255 image."""
    rle, last, current, run_start, run_length = [], 0, 0, -1, 0
    for x in range(width):
        for y in range(height):
            colour = img[x][y]
            if colour != last:
                if colour == 255:
                    run_start, run_length = current, 1
                else:
                    rle += [str(run_start), str(run_length)]
                    run_start, run_length, current = -1, 0, 0
            elif run_start > -1:
                run_length += 1
            last = colour
            current += 1
    return " ".join(rle)


def test_rle_hand_worked_strings():
    assert encode(MASK, "absolute") == "4 2 11 2"
    assert encode(MASK, "relative") == "3 2 5 2"  # second run starts 5 after the first ends
    assert np.array_equal(decode("4 2 11 2", MASK.shape, "absolute"), MASK)
    assert np.array_equal(decode("3 2 5 2", MASK.shape, "relative"), MASK)
    assert encode(np.zeros((5, 5)), "relative") == "-1"
    assert not decode("-1", (5, 5)).any() and decode(" -1", (5, 7)).shape == (5, 7)


def test_rle_matches_the_challenge_reference_encoder_and_round_trips():
    rng = np.random.default_rng(3)
    mask = (rng.random((32, 48)) > 0.7).astype(np.uint8)
    mask[-1, -1] = 0  # the reference encoder never closes a run that reaches the last pixel
    expected = siim_mask2rle((mask * 255).T, 48, 32)
    assert encode(mask, "relative") == expected
    for flavour in ("relative", "absolute"):
        assert np.array_equal(decode(encode(mask, flavour), mask.shape, flavour), mask)


def test_rle_bad_strings_name_the_problem():
    with pytest.raises(InputError, match="odd number"):
        decode("1 2 3", (4, 4))
    with pytest.raises(InputError, match="outside the 4x4 image"):
        decode("10 10", (4, 4), "absolute")


def test_rle_csv_merges_rows_of_one_image_and_writes_kaggle_csv(tmp_path: Path):
    a = np.zeros((6, 6), np.uint8)
    a[1:3, 1] = 1
    b = np.zeros((6, 6), np.uint8)
    b[4, 3:5] = 1
    src = tmp_path / "train-rle.csv"
    # the challenge file: a space after the comma, two rows for image 1, -1 for image 2
    src.write_text(f"ImageId, EncodedPixels\n1.2.3, {encode(a)}\n1.2.3, {encode(b)}\n1.2.4, -1\n")
    masks = read_rle_csv(src, (6, 6))
    assert list(masks) == ["1.2.3", "1.2.4"]
    assert np.array_equal(masks["1.2.3"], a | b) and not masks["1.2.4"].any()
    out = write_rle_csv(tmp_path / "sub.csv", masks.items(), flavour="absolute")
    lines = out.read_text().splitlines()
    assert lines[0] == "ImageId,EncodedPixels" and lines[2] == "1.2.4,-1"
    # columns 1 and 3 of a 6x6 image: rows 1,2 of column 1 -> 8, 9; row 4 of columns 3,4 -> 23, 29
    assert lines[1] == "1.2.3,8 2 23 1 29 1"
    split = write_rle_csv(tmp_path / "regions.csv", [("1.2.3", a | b)], flavour="relative", split_components=True)
    assert len(split.read_text().splitlines()) == 3
    assert np.array_equal(read_rle_csv(split, (6, 6))["1.2.3"], a | b)


def _dx(path: Path, pixels: np.ndarray, photometric: str, view: str = "PA", bits: int = 8) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.ViewPosition, ds.PatientID = "DX", view, "anon"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated = 8 if bits <= 8 else 16
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, 0
    ds.ImagerPixelSpacing = [0.2, 0.1]  # between rows, between columns
    ds.PixelData = pixels.astype(np.uint8 if bits <= 8 else np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


def test_single_image_dicom_monochrome1_inverted_with_spacing_and_view(tmp_path: Path):
    pixels = np.array([[0, 10, 255], [100, 200, 50]], dtype=np.uint8)
    img = read_image(_dx(tmp_path / "cr.dcm", pixels, "MONOCHROME1", "AP"))
    assert img.array.shape == (3, 2, 1)  # [column, row, 0]
    assert img.array[:, :, 0].T.tolist() == [[255, 245, 0], [155, 55, 205]]
    assert np.allclose(img.spacing, [0.1, 0.2, 1.0])
    assert img.meta["ViewPosition"] == "AP" and img.modality == "DX"
    plain = read_image(_dx(tmp_path / "dx.dcm", pixels, "MONOCHROME2"))
    assert np.array_equal(plain.array[:, :, 0].T, pixels) and plain.meta["ViewPosition"] == "PA"
    assert invert_monochrome1(np.array([0, 4095], np.uint16), 12).tolist() == [4095, 0]
    assert invert_monochrome1(np.array([-2048, 0], np.int16), 12, 1).tolist() == [2047, -1]


def test_dicom_files_do_not_count_as_image_files_of_a_folder(tmp_path: Path):
    path = _dx(tmp_path / "x.dcm", np.zeros((4, 4)), "MONOCHROME2")
    assert image_suffix(path) == "" and not is_image_file(path)  # a folder of .dcm is a series
    assert image_suffix("a.png") == ".png" and image_suffix("b.npy") == ".npy"


def test_png_round_trip_keeps_label_values_and_geometry(tmp_path: Path):
    labels = np.zeros((5, 7, 1), np.uint8)
    labels[1:3, 2:6, 0] = 1
    labels[4, 0, 0] = 255
    out = write_image(Image(labels, planar_affine()), tmp_path / "mask.png")
    back = read_image(out)
    assert np.array_equal(back.array, labels) and np.allclose(back.affine, planar_affine())
    from PIL import Image as PILImage

    with PILImage.open(out) as im:
        assert im.size == (5, 7)  # width = columns = i
    wide = np.arange(12, dtype=np.uint16).reshape(3, 4, 1) * 5000
    assert np.array_equal(read_image(write_image(Image(wide, np.eye(4)), tmp_path / "w.png")).array, wide)
    grey_rgb = np.repeat(np.arange(12, dtype=np.uint8).reshape(3, 4, 1) * 20, 3, axis=2)
    PILImage.fromarray(grey_rgb).save(tmp_path / "rgb.png")
    assert read_image(tmp_path / "rgb.png").array.shape == (4, 3, 1)  # equal channels -> grey


def test_jpeg_export_is_close_and_bad_files_are_one_sentence(tmp_path: Path):
    x = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48, 1)
    back = read_image(write_image(Image(x, planar_affine()), tmp_path / "x.jpg"))
    assert back.array.shape == (64, 48, 1)
    assert np.abs(back.array.astype(float) - x * 255).max() < 6  # min..max scaled, lossy
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(InputError, match="broken.png: not a readable PNG image"):
        read_image(tmp_path / "broken.png")


def test_npy_round_trip_keeps_the_input_shape(tmp_path: Path):
    slice2d = np.arange(20, dtype=np.float32).reshape(4, 5)
    np.save(tmp_path / "s.npy", slice2d)
    img = read_image(tmp_path / "s.npy")
    assert img.array.shape == (4, 5, 1) and np.allclose(img.affine, np.eye(4))
    write_image(img.with_array((img.array > 9).astype(np.uint8)), tmp_path / "p.npy")
    assert np.array_equal(np.load(tmp_path / "p.npy"), (slice2d > 9).astype(np.uint8))
    four = np.random.default_rng(0).random((3, 4, 5, 2)).astype(np.float32)
    np.save(tmp_path / "v.npy", four)
    v = read_image(tmp_path / "v.npy", allow_4d=True)
    assert v.array.shape == (2, 3, 4, 5)
    write_image(v, tmp_path / "v2.npy")
    assert np.array_equal(np.load(tmp_path / "v2.npy"), four)
    np.save(tmp_path / "obj.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="obj.npy: not a readable .npy array"):
        read_image(tmp_path / "obj.npy")


def test_siim_dicoms_and_run_length_csv_become_an_msd_folder(tmp_path: Path):
    from delineo.cli import main
    from delineo.config import DataConfig
    from delineo.data.sources import load_dataset

    src = tmp_path / "dicom-images-train" / "study" / "series"
    src.mkdir(parents=True)
    pixels = np.arange(6 * 8, dtype=np.uint8).reshape(6, 8)
    _dx(src / "1.2.3.dcm", pixels, "MONOCHROME2", "PA")
    _dx(src / "1.2.4.dcm", pixels, "MONOCHROME1", "AP")
    a = np.zeros((6, 8), np.uint8)
    a[1:3, 2] = 1
    b = np.zeros((6, 8), np.uint8)
    b[5, 6:8] = 1
    rle = tmp_path / "train-rle.csv"
    rle.write_text(f"ImageId, EncodedPixels\n1.2.3, {encode(a)}\n1.2.3, {encode(b)}\n1.2.4, -1\n9.9.9, -1\n")
    out = tmp_path / "siim"
    assert main(["-q", "convert-siim", str(tmp_path / "dicom-images-train"), str(rle), str(out)]) == 0
    ds = load_dataset(DataConfig(source={"type": "msd", "path": str(out)}))
    assert [c.case_id for c in ds.cases] == ["1.2.3", "1.2.4"] and ds.labels == {1: "pneumothorax"}
    images, label = ds.cases[0].load()
    assert np.array_equal(label.array[:, :, 0].T, a | b)  # two rows of one image merged
    assert np.array_equal(images[0].array[:, :, 0].T, pixels) and label.same_grid(images[0])
    assert np.allclose(images[0].spacing, [0.1, 0.2, 1.0])
    assert (out / "views.csv").read_text().splitlines() == ["ImageId,ViewPosition", "1.2.3,PA", "1.2.4,AP"]
    assert main(["-q", "convert-siim", str(tmp_path / "dicom-images-train"), str(rle), str(out)]) == 2

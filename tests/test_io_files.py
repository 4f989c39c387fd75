"""Reading and writing images keeps geometry; bad files give one clear sentence."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from delineo.errors import InputError
from delineo.io import Image, read_image, write_image
from delineo.io.image import affine_from_itk, itk_from_affine

OBLIQUE = np.array([[0.0, 0.0, -2.0, 10.0], [1.5, 0.0, 0.0, -5.0], [0.0, -1.0, 0.0, 3.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha"])
def test_round_trip_keeps_array_and_affine(tmp_path, suffix):
    arr = np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7)
    path = write_image(Image(arr, OBLIQUE), tmp_path / f"x{suffix}")
    back = read_image(path)
    np.testing.assert_array_equal(back.array, arr)
    np.testing.assert_allclose(back.affine, OBLIQUE, atol=1e-6)
    np.testing.assert_allclose(back.spacing, [1.5, 1.0, 2.0])


def test_nrrd_geometry_matches_simpleitk_convention(tmp_path):
    import SimpleITK as sitk

    itk = sitk.GetImageFromArray(np.zeros((4, 5, 6), np.uint8))  # (k, j, i)
    itk.SetSpacing((0.5, 0.7, 2.0))
    itk.SetOrigin((10.0, 20.0, 30.0))
    sitk.WriteImage(itk, str(tmp_path / "a.nrrd"))
    img = read_image(tmp_path / "a.nrrd")
    assert img.array.shape == (6, 5, 4)
    # LPS origin (10, 20, 30) is RAS (-10, -20, 30); LPS identity direction flips x and y
    np.testing.assert_allclose(img.origin, [-10, -20, 30])
    np.testing.assert_allclose(np.diag(img.affine)[:3], [-0.5, -0.7, 2.0])
    spacing, origin, direction = itk_from_affine(img.affine)
    np.testing.assert_allclose(affine_from_itk(spacing, origin, direction), img.affine)


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        read_image(tmp_path / "nope.nii.gz")


def test_truncated_nifti(tmp_path):
    path = tmp_path / "t.nii.gz"
    nib.save(nib.Nifti1Image(np.random.rand(20, 20, 20).astype(np.float32), np.eye(4)), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match=r"t\.nii\.gz: not a readable NIfTI"):
        read_image(path)


def test_garbage_nifti(tmp_path):
    path = tmp_path / "g.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti at all" * 10))
    with pytest.raises(InputError, match="not a readable NIfTI"):
        read_image(path)


def test_nan_voxels(tmp_path):
    arr = np.zeros((4, 4, 4), np.float32)
    arr[1, 2, 3] = np.nan
    arr[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(arr, np.eye(4)), tmp_path / "n.nii.gz")
    with pytest.raises(InputError, match="2 voxels are NaN or infinite"):
        read_image(tmp_path / "n.nii.gz")


def test_4d_where_3d_expected(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 2), np.float32), np.eye(4)), tmp_path / "f.nii.gz")
    with pytest.raises(InputError, match="4D image"):
        read_image(tmp_path / "f.nii.gz")
    assert read_image(tmp_path / "f.nii.gz", allow_4d=True).array.shape == (2, 4, 4, 4)


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(InputError):
        write_image(Image(np.zeros((2, 2, 2)), np.eye(4)), tmp_path / "out.png")
    assert list(tmp_path.iterdir()) == []

"""Maps saved as NIfTI keep the input's exact geometry; PNG panels are written."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pytest

from delineo.errors import DelineoError
from delineo.explain import choose_slices, save_map_nifti, save_panels
from delineo.io.files import read_image, write_image
from delineo.io.image import Image


def oblique_image() -> Image:
    affine = np.array([[0.0, -0.8, 0.1, 12.5], [0.9, 0.0, 0.0, -40.0], [0.0, 0.05, 2.5, 7.25], [0, 0, 0, 1]])
    return Image(np.random.default_rng(0).normal(size=(6, 5, 4)).astype(np.float32), affine, "CT",
                 {"nifti_header": nib.Nifti1Header()})


def test_nifti_map_has_the_input_geometry(tmp_path) -> None:
    image = oblique_image()
    amap = np.random.default_rng(1).normal(size=(6, 5, 4))
    path = save_map_nifti(amap, image, tmp_path / "map.nii.gz")
    back = read_image(path)
    # exactly the geometry the input itself has once stored as NIfTI (float32 sform)
    stored_input = read_image(write_image(image, tmp_path / "image.nii.gz"))
    np.testing.assert_array_equal(back.affine, stored_input.affine)
    np.testing.assert_allclose(back.affine, image.affine, atol=1e-6)
    assert back.spatial_shape == image.spatial_shape
    np.testing.assert_allclose(back.array, amap.astype(np.float32))
    multi = save_map_nifti(np.stack([amap, -amap]), image, tmp_path / "maps.nii.gz")
    back = read_image(multi, allow_4d=True)
    assert back.array.shape == (2, 6, 5, 4)
    np.testing.assert_array_equal(back.affine, stored_input.affine)
    np.testing.assert_allclose(back.array[1], -amap.astype(np.float32))
    with pytest.raises(DelineoError, match="does not fit"):
        save_map_nifti(amap[:5], image, tmp_path / "bad.nii.gz")


def test_panels(tmp_path) -> None:
    image = oblique_image().array
    prediction = np.zeros(image.shape, bool)
    prediction[1:4, 1:4, 2] = True
    prediction[2, 2, 1] = True
    reference = np.roll(prediction, 1, axis=0)
    assert choose_slices(prediction, axis=2, count=2) == [1, 2]
    assert choose_slices(np.zeros_like(prediction), axis=2) == [2]
    for amap, slices in ((np.abs(image), None), (image, [0, 3])):
        path = save_panels(tmp_path / "panel.png", image[None], amap, prediction, reference, slices=slices,
                           title="saliency")
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(DelineoError, match="outside the image"):
        save_panels(tmp_path / "p.png", image, image, slices=[9])
    assert not list(tmp_path.glob(".*tmp*"))

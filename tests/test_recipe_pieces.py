"""Recipe pieces with known answers: the head-and-neck window, ImageNet normalisation, WMH
slice fitting (pad with the slice minimum, centre crop, exact inverse), tumour burden in ml,
the error-overlap matrix between networks, and the 80/20 patient-grouped split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from delineo.config import DataConfig, IntensityConfig, PreprocessConfig, config_from_dict
from delineo.data.sources import Case, load_dataset
from delineo.data.splits import make_splits
from delineo.errors import ConfigError, InputError
from delineo.evaluate.burden import burden_ml, error_overlap_matrix, tumour_burden
from delineo.io.image import Image
from delineo.preprocess.intensity import imagenet, window
from delineo.preprocess.pipeline import normalise, preprocess
from delineo.preprocess.slices import fit_slices, restore_slices

from .conftest import needs_shared, write_msd


def test_window_formula_values():
    x = np.array([-1000, -30, 70, 150, 170, 400], dtype=np.float32)
    # window [-30, 170]: centre 70, width 200 -> clip(x - 70, -100, 100)
    assert window(x, -30, 170).tolist() == [-100, -100, 0, 80, 100, 100]
    stack = np.stack([x, x * 0 + 5])
    out = normalise(stack, [IntensityConfig(preset="window", window=(-30, 170)),
                            IntensityConfig(preset="window", window=(0, 4))])
    assert out[0].tolist() == [-100, -100, 0, 80, 100, 100] and out[1].tolist() == [2] * 6  # PET: 5 - 2 -> +2


def test_imagenet_normalisation_values():
    rgb = np.full((3, 2, 2, 1), 255.0, dtype=np.float32)
    out = normalise(rgb, [IntensityConfig(preset="imagenet")])
    assert np.allclose(out[:, 0, 0, 0], [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert np.isclose(imagenet(np.array([0.0]))[0], -0.449 / 0.226)  # one grey channel
    assert np.isclose(imagenet(np.array([2048.0]), scale=4096)[0], (0.5 - 0.449) / 0.226)


def test_window_preset_through_preprocess_keeps_hu_units():
    ct = Image(np.array([[[-500.0, 40.0], [140.0, 900.0]]], dtype=np.float32), np.eye(4))
    x, _, _ = preprocess([ct], None, PreprocessConfig(orientation=None, crop_foreground=False,
                                                      intensity=[IntensityConfig(preset="window", window=(-60, 140))]))
    assert x[0].ravel().tolist() == [-100.0, 0.0, 100.0, 100.0]


def test_fit_slices_pads_with_slice_minimum_and_crops_centre_with_exact_inverse():
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(200, 300, 4)).astype(np.float32)
    fitted, rec = fit_slices(vol, (256, 256), axis=2)
    assert fitted.shape == (256, 256, 4)
    assert rec.pads == ((28, 28), (0, 0)) and rec.crops == ((0, 200), (22, 278))
    for k in range(4):  # padding rows hold the minimum of the (cropped) slice
        assert np.all(fitted[:28, :, k] == vol[:, 22:278, k].min())
    assert np.array_equal(fitted[28:228, :, 1], vol[:, 22:278, 1])
    back = restore_slices(fitted, rec, fill=-7)
    assert back.shape == vol.shape
    assert np.array_equal(back[:, 22:278], vol[:, 22:278]) and np.all(back[:, :22] == -7)
    small = rng.integers(0, 5, size=(3, 31, 17)).astype(np.uint8)  # slices along axis 0, odd padding
    f2, r2 = fit_slices(small, (32, 20), axis=0)
    assert f2.shape == (3, 32, 20) and r2.pads == ((0, 1), (1, 2))
    assert np.array_equal(restore_slices(f2, r2), small)


def test_burden_in_ml_from_the_affine():
    mask = np.zeros((10, 10, 10), np.uint8)
    mask[:4, :5, :5] = 1  # 100 liver voxels
    mask[0, 0, :3] = 2  # 3 tumour voxels
    img = Image(mask, np.diag([0.8, 0.8, 2.5, 1.0]))  # 1.6 mm^3 per voxel
    assert burden_ml(img, 2) == pytest.approx(3 * 1.6 / 1000)
    b = tumour_burden(img)
    assert b["liver_ml"] == pytest.approx(100 * 1.6 / 1000) and b["tumour_burden"] == pytest.approx(0.03)


def test_error_overlap_matrix_known_values():
    ref = np.zeros((4, 4), np.uint8)
    ref[1:3, 1:3] = 1
    perfect = ref.copy()
    a = ref.copy()
    a[0, 0] = 1  # one false positive
    b = ref.copy()
    b[0, 0] = 1
    b[1, 1] = 0  # the same false positive and one false negative
    m = error_overlap_matrix([[perfect], [a], [b]], [ref])
    assert np.allclose(np.diag(m), 1)
    assert m[1, 2] == pytest.approx(2 * 1 / (1 + 2)) and m[0, 1] == 0 and np.allclose(m, m.T)


def test_holdout_split_is_seeded_and_grouped_by_patient():
    cases = [Case(f"p{p}_t{t}", patient=f"p{p}") for p in range(10) for t in range(2)]
    s = make_splits(cases, folds=5, seed=3, val_fraction=0.2)
    assert len(s["folds"]) == 1
    val, train = s["folds"][0]["val"], s["folds"][0]["train"]
    assert len(val) == 4 and len(train) == 16  # 2 of 10 patients, both studies of each
    assert {c.split("_")[0] for c in val}.isdisjoint({c.split("_")[0] for c in train})
    assert s == make_splits(cases, folds=5, seed=3, val_fraction=0.2)
    assert s != make_splits(cases, folds=5, seed=4, val_fraction=0.2)
    three = [Case("a_1", patient="a"), Case("a_2", patient="a"), Case("b_1", patient="b"), Case("c_1", patient="c")]
    assert len({c[0] for c in make_splits(three, 5, 0, val_fraction=0.2)["folds"][0]["val"]}) == 1


def test_patient_pattern_groups_studies(tmp_path: Path):
    root = write_msd(tmp_path / "d", n=4)
    for f in sorted((root / "imagesTr").iterdir()) + sorted((root / "labelsTr").iterdir()):
        i = int(f.name[3:6])
        f.rename(f.with_name(f.name.replace(f"ph_{i:03d}", f"pat{i // 2}_{i % 2}")))
    data = DataConfig(source={"type": "msd", "path": str(root), "patient_pattern": r"^(pat\d+)_"})
    assert sorted({c.patient for c in load_dataset(data).cases}) == ["pat0", "pat1"]
    with pytest.raises(InputError, match="does not match data.source.patient_pattern"):
        load_dataset(DataConfig(source={"type": "msd", "path": str(root), "patient_pattern": r"^zz"}))
    with pytest.raises(ConfigError, match="patient_pattern"):
        config_from_dict({"data": {"source": {"path": str(root), "patient_pattern": "(["}}})


def test_brain_tumour_pgbm_patients_and_80_20_split():
    root = needs_shared() / "brain-tumour-pgbm"
    data = DataConfig(source={"type": "msd", "path": str(root), "patient_pattern": r"^(pgbm\d+)_"}, val_fraction=0.2)
    cases = load_dataset(data).cases
    assert sorted({c.patient for c in cases}) == ["pgbm003", "pgbm006", "pgbm008"]
    split = make_splits(cases, 5, seed=0, val_fraction=0.2)["folds"][0]
    assert len({c[:7] for c in split["val"]}) == 1 and len({c[:7] for c in split["train"]}) == 2


def test_burden_and_error_overlap_verbs(tmp_path: Path, capsys):
    from delineo.cli import main
    from delineo.io import write_image

    ref = np.zeros((6, 6, 2), np.uint8)
    ref[1:4, 1:4, :] = 1
    ref[2, 2, 0] = 2  # one tumour voxel
    affine = np.diag([2.0, 2.0, 2.5, 1.0])  # 10 mm^3 per voxel
    a, b = ref.copy(), ref.copy()
    a[0, 0, 0] = 1  # network a: one false positive
    b[0, 0, 0] = 1
    b[1, 1, 1] = 0  # network b: the same false positive and one false negative
    for folder, arr in (("ref", ref), ("a", a), ("b", b)):
        write_image(Image(arr, affine), tmp_path / folder / "case1.nii.gz")
    assert main(["burden", str(tmp_path / "ref" / "case1.nii.gz")]) == 0
    assert "liver 0.2 ml, tumour 0.01 ml, tumour burden 5.56 %" in capsys.readouterr().out  # 18 voxels, 1 tumour
    assert main(["error-overlap", str(tmp_path / "ref"), str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert rows[0] == "error-mask Dice over 1 cases (label 1)"
    assert rows[2].split()[-2:] == ["1.000", "0.667"]  # 2 x 1 shared error voxel / (1 + 2)
    assert rows[3].split()[-2:] == ["0.667", "1.000"]


def test_slice_fit_in_preprocess_restores_exactly_and_keeps_the_affine():
    from delineo.config import SliceFitConfig
    from delineo.preprocess.pipeline import preprocessed_affine, restore

    rng = np.random.default_rng(1)
    img = Image(rng.normal(5, 1, (20, 40, 3)).astype(np.float32), np.diag([0.9, 0.9, 3.0, 1.0]))
    lab = np.zeros((20, 40, 3), np.uint8)
    lab[5:9, 10:30, 1] = 1
    cfg = PreprocessConfig(orientation=None, crop_foreground=False, slice_fit=SliceFitConfig(size=(32, 32), axis=2))
    x, y, rec = preprocess([img], Image(lab, img.affine), cfg)
    assert x.shape == (1, 32, 32, 3) and y.shape == (32, 32, 3)
    assert np.all(x[0, :6, :, 0] == x[0, 6:26, :, 0].min())  # rows 0..5 padded with the slice minimum
    assert not y[:6].any() and y.sum() == lab[:, 4:36].sum()
    assert np.array_equal(restore(y, rec, is_label=True)[:, 4:36], lab[:, 4:36])  # exact on the kept columns
    assert np.array_equal(restore(y, rec, is_label=True)[:, :4], np.zeros((20, 4, 3)))
    probs = np.stack([1 - y, y]).astype(np.float32)
    back = restore(probs, rec, probabilities=True)
    assert back.shape == (2, 20, 40, 3) and np.all(back[0, :, :4] == 1)  # background outside the crop
    # the fitted grid's voxel (6, 0, k) is the input's voxel (0, 4, k)
    aff = preprocessed_affine(rec)
    assert np.allclose(aff @ [6, 0, 1, 1], img.affine @ [0, 4, 1, 1])
    import json

    from delineo.preprocess.pipeline import GeometryRecord

    again = GeometryRecord.from_dict(json.loads(json.dumps(rec.to_dict())))  # as stored in the cache
    assert np.array_equal(restore(y, again, is_label=True), restore(y, rec, is_label=True))


def test_predefined_test_folds_are_out_of_every_fold():
    cases = [Case(f"fold_{g}_p{g}{i}", patient=f"{g}{i}", fold=g) for g in range(5) for i in range(2)]
    s = make_splits(cases, folds=4, test_folds=[2])
    assert s["test"] == ["fold_2_p20", "fold_2_p21"] and len(s["folds"]) == 4
    assert [f["val"] for f in s["folds"]] == [["fold_0_p00", "fold_0_p01"], ["fold_1_p10", "fold_1_p11"],
                                              ["fold_3_p30", "fold_3_p31"], ["fold_4_p40", "fold_4_p41"]]
    assert all(not set(s["test"]) & set(f["train"]) for f in s["folds"])
    with pytest.raises(InputError, match="no fold group 7"):
        make_splits(cases, folds=4, test_folds=[7])
    with pytest.raises(InputError, match="needs predefined folds"):
        make_splits([Case("a"), Case("b"), Case("c")], folds=2, test_folds=[0])

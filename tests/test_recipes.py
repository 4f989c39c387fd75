"""The recipes that ship in the package: each README has its sections, each experiment file
validates and its default data loads; a copy trains from any folder; three recipes train shrunk
end to end through the CLI and use their pieces: head-and-neck (window preset, test fold written
back into the HDF5 layout), pneumothorax (PNG in, run-length CSV out, decoded back to the same
masks) and brain tumour on the real glioblastoma data (80/20 split by patient)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import h5py
import numpy as np
import pytest
import yaml

from delineo import recipes
from delineo.cli import main
from delineo.config import load_config
from delineo.data.sources import load_dataset
from delineo.errors import InputError
from delineo.io import read_image, write_image
from delineo.io.planar import planar_affine, to_rows_cols
from delineo.io.rle import read_rle_csv

from .conftest import needs_shared

NAMES = ["brain_tumour", "headneck_petct", "liver", "pneumothorax", "wmh"]
SECTIONS = ["## What the original did", "## What its authors reported", "## What Delineo gets here", "## Run it",
            "## Still missing"]
TINY = ["train.epochs=2", "train.iterations_per_epoch=3", "train.val_every=100", "train.num_threads=1",
        "train.device=cpu", "train.early_stopping_patience=null", "sampling.batch_size=4"]


def test_five_recipes_with_their_sections():
    assert recipes.list_recipes() == NAMES
    for name in NAMES:
        text = (recipes.recipe_path(name) / "README.md").read_text()
        positions = [text.find(s) for s in SECTIONS]
        assert -1 not in positions and positions == sorted(positions), name
        assert "not measured yet" in text or "measured" in text
        # the figures: a side-by-side or a measured line, and the benchmark that produces them exists
        gets = text[text.find("## What Delineo gets here"):text.find("## Run it")]
        scripts = set(re.findall(r"benchmarks/(\w+\.py)", gets))
        assert scripts, f"{name}: no benchmark named for the figures"
        for script in scripts:
            assert (Path(__file__).parents[1] / "benchmarks" / script).is_file(), f"{name}: {script}"
        assert "| Delineo here |" in gets or "Measured" in gets, name
        assert "not run" not in gets, name
    with pytest.raises(InputError, match="unknown recipe 'wmhh' \\(did you mean 'wmh'\\?\\)"):
        recipes.recipe_path("wmhh")


def test_recipe_verb_lists_shows_and_locates(capsys):
    assert main(["recipe", "list"]) == 0
    listed = capsys.readouterr().out
    assert all(f"{n} " in listed for n in NAMES) and "classifier.yaml, pipeline.yaml, unet.yaml" not in listed
    assert "classifier.yaml, unet.yaml" in listed  # experiment files only
    assert main(["recipe", "path", "liver"]) == 0
    assert Path(capsys.readouterr().out.strip()) == recipes.RECIPES_DIR / "liver"
    assert main(["recipe", "show", "liver"]) == 0
    assert capsys.readouterr().out.startswith("# Liver and liver tumours on CT")
    assert main(["recipe", "show"]) == 2 and "a recipe NAME is needed" in capsys.readouterr().err


@pytest.mark.parametrize("name", NAMES)
def test_recipe_experiments_validate_and_their_data_loads(name: str):
    files = recipes.experiment_files(name)
    assert files
    for path in files:
        assert path.read_text().startswith("# Recipe"), path
        cfg = load_config(path)
        ds = load_dataset(cfg.data)
        assert Path(cfg.data.source.path).is_relative_to(recipes.RECIPES_DIR.parent / "sample_data")
        assert len(ds.cases) >= 3


def test_recipe_copy_has_absolute_data_paths_and_refuses_a_full_folder(tmp_path: Path, capsys):
    assert main(["recipe", "copy", "wmh", str(tmp_path / "w")]) == 0
    data = yaml.safe_load((tmp_path / "w" / "experiment.yaml").read_text())
    assert Path(data["data"]["source"]["path"]) == (recipes.RECIPES_DIR.parent / "sample_data" / "hippocampus")
    assert load_config(tmp_path / "w" / "experiment.yaml").name == "wmh"
    assert (tmp_path / "w" / "README.md").read_text() == (recipes.recipe_path("wmh") / "README.md").read_text()
    assert main(["recipe", "copy", "wmh", str(tmp_path / "w")]) == 2
    assert "already exists" in capsys.readouterr().err


@pytest.fixture(scope="module")
def headneck_run(tmp_path_factory) -> Path:
    """The head-and-neck recipe (window preset) trained shrunk on the HDF5 stand-in, once."""
    exp = recipes.recipe_path("headneck_petct") / "experiment.yaml"
    runs = tmp_path_factory.mktemp("headneck") / "runs"
    assert main(["-q", "train", str(exp), "--fold", "0", "--runs", str(runs), "--no-evaluate",
                 *sum((["--set", s] for s in TINY + ["model.filters=[8,16]", "sampling.patch_size=[40,56]",
                                                     "train.optimizer.lr=0.003"]), [])]) == 0
    return runs / "headneck_petct" / "fold_0"


def test_headneck_window_recipe_trains_and_writes_the_test_fold_back(headneck_run: Path, tmp_path: Path):
    source = load_config(recipes.recipe_path("headneck_petct") / "experiment.yaml").data.source.path
    out = tmp_path / "fold4.h5"
    assert main(["-q", "predict-hdf5", str(headneck_run), source, str(out), "--fold", "4"]) == 0
    splits = json.loads((headneck_run.parent / "splits.json").read_text())  # fold_4 never trained on
    assert splits["test"] and all(c.startswith("fold_4_") for c in splits["test"]) and len(splits["folds"]) == 4
    assert not any(c.startswith("fold_4_") for f in splits["folds"] for c in f["train"] + f["val"])
    with h5py.File(source) as src, h5py.File(out) as dst:
        assert list(dst) == ["fold_4"]
        assert np.array_equal(dst["fold_4/x"][()], src["fold_4/x"][()])
        assert np.array_equal(dst["fold_4/patient_idx"][()], src["fold_4/patient_idx"][()])
        p = dst["fold_4/predicted"][()]
        assert p.shape == src["fold_4/y"].shape and p.dtype == np.float32 and 0 <= p.min() and p.max() <= 1


def test_pneumothorax_png_in_run_length_csv_out(tmp_path: Path):
    exp = recipes.recipe_path("pneumothorax") / "unet.yaml"
    runs = tmp_path / "runs"
    assert main(["-q", "train", str(exp), "--fold", "0", "--runs", str(runs), "--no-evaluate",
                 *sum((["--set", s] for s in TINY + ["data.max_cases=6", "data.folds=3", "model.backbone=resnet18",
                                                     "model.decoder_channels=[16,16,8,8,8]",
                                                     "sampling.patch_size=[32,32]"]), [])]) == 0
    # three 8-bit radiograph-like PNGs: slices of sample cases
    src = tmp_path / "png"
    for i, f in enumerate(sorted((recipes.RECIPES_DIR.parent / "sample_data/hippocampus/imagesTr").iterdir())[:3]):
        vol = read_image(f).array
        sl = vol[:, :, vol.shape[2] // 2].astype(np.float32)
        write_image(read_image(f).__class__((sl / sl.max() * 255).astype(np.uint8)[:, :, None], planar_affine()),
                    src / f"xr{i}.png")
    masks = tmp_path / "masks"
    assert main(["-q", "predict", str(runs / "pneumothorax_unet" / "fold_0"), str(src), str(masks)]) == 0
    assert sorted(p.name for p in masks.iterdir()) == ["xr0.png", "xr1.png", "xr2.png"]
    csv_path = tmp_path / "submission.csv"
    assert main(["-q", "rle-csv", str(masks), str(csv_path)]) == 0
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "ImageId,EncodedPixels" and [r.split(",")[0] for r in rows[1:]] == ["xr0", "xr1", "xr2"]
    for i in range(3):  # each row decodes back to its predicted mask (images differ in size)
        mask = (to_rows_cols(read_image(masks / f"xr{i}.png")) > 0).astype(np.uint8)
        one = tmp_path / f"row{i}.csv"
        one.write_text(rows[0] + "\n" + rows[i + 1] + "\n")
        assert np.array_equal(read_rle_csv(one, mask.shape, flavour="absolute")[f"xr{i}"], mask)


@pytest.mark.slow
def test_brain_tumour_recipe_on_real_glioblastoma_data(tmp_path: Path):
    data = needs_shared() / "brain-tumour-pgbm"
    exp = recipes.recipe_path("brain_tumour") / "experiment.yaml"
    runs = tmp_path / "runs"
    assert main(["-q", "train", str(exp), "--fold", "0", "--runs", str(runs), "--no-evaluate",
                 *sum((["--set", s] for s in TINY + [f"data.source.path={data}", "preprocess.spacing=[3.0,3.0,6.5]",
                                                     "model.filters=[8,16,32]", "sampling.patch_size=[64,64]"]),
                      [])]) == 0
    splits = json.loads((runs / "brain_tumour" / "splits.json").read_text())
    assert len(splits["folds"]) == 1
    val, train = splits["folds"][0]["val"], splits["folds"][0]["train"]
    assert {c[:7] for c in val}.isdisjoint({c[:7] for c in train}) and len({c[:7] for c in train}) == 2
    log = (runs / "brain_tumour" / "fold_0" / "log.csv").read_text().splitlines()
    header, last = log[0].split(","), log[-1].split(",")
    assert 0 <= float(last[header.index("val_dice_tumour")]) <= 1  # validated on the held-out patient's scans


@pytest.mark.parametrize("name", ["liver", "pneumothorax"])
def test_recipe_pipeline_files_validate_and_name_the_recipe_runs(name: str):
    from delineo.infer.pipeline.config import pipeline_from_dict

    path = recipes.recipe_path(name) / "pipeline.yaml"
    cfg, sections = pipeline_from_dict(yaml.safe_load(path.read_text()), str(path))
    trained = {load_config(p).name for p in recipes.experiment_files(name)}
    named = {Path(r).parts[1] for s in sections for r in (getattr(s, "runs", None) or [])}
    assert named == trained, (named, trained)


def test_headneck_modality_gradient_panels(headneck_run: Path, tmp_path: Path, capsys):
    """The CT-vs-PET gradient panels of a fold_4 patient of the stand-in: the PNG is written and
    each channel gets its inside-the-prediction numbers; the summary's arithmetic by hand."""
    source = load_config(recipes.recipe_path("headneck_petct") / "experiment.yaml").data.source.path
    out = tmp_path / "panels.png"
    capsys.readouterr()
    assert main(["-q", "modality-gradients", str(headneck_run), source, "--fold", "4", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == str(out) and out.stat().st_size > 10_000
    assert lines[1].startswith("CT: mean |g| ") and lines[2].startswith("PET: mean |g| ")
    from delineo.explain.modality import channel_summary

    g = np.array([[[[1.0, -2.0]]], [[[0.0, 4.0]]]])  # (C=2, 1, 1, 2)
    s = channel_summary(g, np.array([[[1, 1]]]), ["CT", "PET"])
    assert s["CT"] == {"magnitude": 1.5, "positive": 0.5, "negative": 1.0} and s["PET"]["positive"] == 2.0


def test_liver_recipe_lesion_stage_predicts_labels_apart_from_the_liver():
    """The cascade keeps stage 1's liver (label 1) beside the lesion stage's output, so the lesion
    network must predict other values: without ``data.labels: {2: tumour}`` it learnt label 1
    inside the liver box and ``delineo pipeline build pipeline.yaml`` refused the recipe."""
    folder = recipes.recipe_path("liver")
    pipeline = yaml.safe_load((folder / "pipeline.yaml").read_text())
    cascade = next(s for s in pipeline["stages"] if s["kind"] == "cascade")
    assert cascade["keep_organ"] is True
    liver = load_dataset(load_config(folder / "experiment.yaml").data).labels
    lesion_cfg = load_config(folder / "lesion.yaml")
    lesion = load_dataset(lesion_cfg.data).labels
    assert set(liver) == {1} and set(lesion) == {2}
    assert set(lesion_cfg.preprocess.region.labels) == {1, 2}  # the region is still liver + tumour

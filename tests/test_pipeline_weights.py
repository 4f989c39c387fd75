"""Pipelines (issue 10): ``combine: weighted_mean`` with ``weights: search``, with known answers.

Hand-built one-layer "networks" saved as ordinary run folders (checkpoint + ``cases.json``)
make the answers exact on a phantom dataset whose image is its own label (1 inside, 0 outside):

- ``good`` is right everywhere but barely sure (p = 0.55 for the right label);
- ``bad`` is wrong everywhere and sure of it (p ~ 1 for the wrong label).

Their combined foreground probability is about 0.55 w_good inside and 0.45 w_good + w_bad
outside, so only w_bad < 1/11 and w_good > 10/11 are right everywhere: of the multiplier grid's
weightings, only (1, 0). The mean is wrong everywhere (Dice 0). Two copies of one member give
the same Dice for every weighting, so the tie rule must keep equal weights.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import yaml

from delineo.cli import main
from delineo.config import config_from_dict
from delineo.errors import ConfigError
from delineo.infer.pipeline.config import pipeline_from_dict
from delineo.infer.pipeline.segment import mean_dice, search_weights
from delineo.modelfile.checkpoint import ModelMeta, save_checkpoint
from delineo.registry import MODELS

CASES = [f"w_{i}" for i in range(4)]
SURE = 40.0  # logit scale of the confidently wrong member
UNSURE = 2 * math.log(0.55 / 0.45)  # logit scale that gives the right label p = 0.55


class _Level(torch.nn.Module):
    """A 1x1 convolution: two-channel logits (0, a * (x - 0.5) + b) set by the test."""

    divisor = 1

    def __init__(self, in_channels: int = 1, out_channels: int = 2, dims: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


if "test_weights_level" not in MODELS.names():
    MODELS.register("test_weights_level")(_Level)


def _dataset(root: Path) -> Path:
    """Four cases whose image equals their one-label reference (blobs of different sizes)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for i, cid in enumerate(CASES):
        label = np.zeros((12, 10, 4), np.uint8)
        label[2:6 + i, 3:7, 1:3] = 1
        nib.save(nib.Nifti1Image(label.astype(np.float32), np.eye(4)), root / "imagesTr" / f"{cid}_0000.nii.gz")
        nib.save(nib.Nifti1Image(label, np.eye(4)), root / "labelsTr" / f"{cid}.nii.gz")
    (root / "dataset.json").write_text(json.dumps({"name": "weights", "modality": {"0": "MR"},
                                                   "labels": {"0": "background", "1": "blob"}}))
    return root


def _run(root: Path, name: str, data: Path, scale: float, val: list[str]) -> Path:
    """A run folder holding a hand-set network: foreground logit ``scale * (x - 0.5)``."""
    cfg = config_from_dict({
        "name": name, "data": {"source": {"type": "msd", "path": str(data)}},
        "preprocess": {"orientation": "RAS", "crop_foreground": False, "intensity": [{"preset": "none"}]},
        "sampling": {"mode": "2d", "patch_size": [8, 8], "axis": 2}, "augment": {"flip": {"p": 0.0}},
        "model": {"name": "test_weights_level"}, "train": {"channels_last": False}}).to_dict()
    meta = ModelMeta(1, 2, 2, "2d", [8, 8], 2, 0, {1: "blob"}, ["MR"], 1)
    net = _Level()
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.zero_()
        net.conv.weight[1] = scale
        net.conv.bias[1] = -0.5 * scale
    run = root / name
    save_checkpoint(run / "checkpoints" / "best.pt", {"config": cfg, "meta": meta.to_dict(),
                                                       "model_state": net.state_dict()})
    (run / "cases.json").write_text(json.dumps({"fold": 0, "train": sorted(set(CASES) - set(val)), "val": val}))
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("weights")
    data = _dataset(root / "data")
    _run(root / "runs", "good", data, UNSURE, CASES)
    _run(root / "runs", "bad", data, -SURE, CASES)
    _run(root / "runs", "good_a", data, UNSURE, CASES[:2])  # out of fold on w_0, w_1 only
    _run(root / "runs", "good_b", data, UNSURE, CASES[2:])  # ... and on w_2, w_3 only
    return root


def _pipeline(root: Path, name: str, members: list[str], **segment) -> Path:
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, "stages": [
        {"name": "seg", "kind": "segment", "combine": "weighted_mean",
         "members": [{"name": m, "runs": [f"runs/{m.split(':')[0]}"]} for m in members], **segment}]}))
    return path


def _dice_on_cases(model: Path, data: Path) -> float:
    """Mean Dice of a .delineo file over the four cases, as a user gets it from predict."""
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.io.files import read_image

    pipe = Pipeline.load(model, "cpu")
    out = []
    for cid in CASES:
        mask, _, _ = pipe.predict_images([read_image(data / "imagesTr" / f"{cid}_0000.nii.gz")])
        out.append(mean_dice(mask.array, read_image(data / "labelsTr" / f"{cid}.nii.gz").array, [1]))
    return float(np.mean(out))


def test_search_gives_the_right_member_all_the_weight(runs: Path, capsys):
    pfile = _pipeline(runs, "search", ["good", "bad"], weights="search")
    out = runs / "search.delineo"
    assert main(["-q", "pipeline", "build", str(pfile), "--out", str(out)]) == 0
    from delineo.infer.pipeline.runner import Pipeline

    pipe = Pipeline.load(out, "cpu")
    stage = pipe.stages[0]
    assert stage.weights == [1.0, 0.0]
    table = pipe.tables["seg.weights"]
    assert table == stage.tables["weights"]
    assert table[0]["weights"] == [0.5, 0.5] and table[0]["dice"] == 0.0  # the mean is wrong everywhere
    chosen = [r for r in table if r["chosen"]]
    assert len(chosen) == 1 and chosen[0]["weights"] == [1.0, 0.0] and chosen[0]["dice"] == 1.0
    assert {r["n_cases"] for r in table} == {4}  # every case, out of fold for both members
    # (1, 0) is the only weighting tried that is right everywhere (see the module docstring)
    assert [r["weights"] for r in table if r["dice"] == 1.0] == [[1.0, 0.0]]
    # what predict gives equals the good member alone; given equal weights give the mean's Dice 0
    assert _dice_on_cases(out, runs / "data") == 1.0
    alone = runs / "good.delineo"
    assert main(["-q", "pipeline", "build", str(_pipeline(runs, "alone", ["good"])), "--out", str(alone)]) == 0
    assert _dice_on_cases(alone, runs / "data") == 1.0
    given = runs / "given.delineo"
    assert main(["-q", "pipeline", "build", str(_pipeline(runs, "given", ["good", "bad"])), "--out",
                 str(given)]) == 0
    assert _dice_on_cases(given, runs / "data") == 0.0
    # delineo info shows the chosen weights and the table
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "member good: " in text and "weight 1," in text and "weight 0," in text
    assert "search weights: weights 0.50/0.50 0.0000" in text and "weights 1.00/0.00 1.0000" in text


def test_identical_members_keep_equal_weights(runs: Path):
    from delineo.infer.pipeline.build import build_pipeline

    pfile = runs / "twins.yaml"
    pfile.write_text(yaml.safe_dump({"name": "twins", "stages": [
        {"name": "seg", "kind": "segment", "combine": "weighted_mean", "weights": "search",
         "members": [{"name": "a", "runs": ["runs/good"]}, {"name": "b", "runs": ["runs/good"]}]}]}))
    _, pipe = build_pipeline(pfile, runs / "twins.delineo", "cpu", progress=False)
    table = pipe.tables["seg.weights"]
    assert pipe.stages[0].weights == [0.5, 0.5] and table[0]["chosen"] and table[0]["weights"] == [0.5, 0.5]
    assert len(table) > 1 and {r["dice"] for r in table} == {1.0}  # every weighting ties: the mean is kept


def test_search_rule_on_known_probabilities():
    """The rule without networks: three members on one case of 4 voxels; member 2 is the only
    right one, but the mean of all three is right too (a tie), so equal weights stay; once the
    mean is wrong on a voxel, the search moves until every voxel is right."""
    ref = np.array([1, 1, 0, 0], np.uint8).reshape(1, 1, 4)

    def member(p):
        p = np.asarray(p, np.float32).reshape(1, 1, 4)
        return np.concatenate([1 - p, p])

    right, wrong_a, wrong_b = member([0.9, 0.9, 0.1, 0.1]), member([0.2, 0.6, 0.1, 0.1]), member([0.5, 0.3, 0.4, 0.1])
    weights, table = search_weights([[wrong_a, wrong_b, right]], [ref], [1])
    assert weights == pytest.approx([1 / 3] * 3) and table[0]["dice"] == 1.0 and len(table) == 1 + 3 * 3
    wrong_c = member([0.1, 0.3, 0.6, 0.6])  # the mean now says 0.4 on voxel 0: Dice 2/3
    weights, table = search_weights([[wrong_a, wrong_c, right]], [ref], [1])
    mean = table[0]["dice"]
    chosen = next(r for r in table if r["chosen"])
    assert mean == pytest.approx(2 / 3) and chosen["dice"] == 1.0 and weights[2] == max(weights)
    assert all(r["dice"] <= chosen["dice"] for r in table)
    # the search's Dice is the evaluation Dice (both empty = 1, one empty = 0)
    from delineo.evaluate.metrics import score_case

    seg = np.array([[[1, 0, 2, 0]]], np.uint8)
    ref3 = np.array([[[1, 1, 0, 0]]], np.uint8)
    s = score_case(seg, ref3, (1.0, 1.0, 1.0), {1: "a", 2: "b", 3: "c"})
    assert mean_dice(seg, ref3, [1, 2, 3]) == pytest.approx(np.mean([s[n]["dice"] for n in "abc"]))


def test_members_without_common_out_of_fold_cases_are_one_sentence(runs: Path):
    pfile = _pipeline(runs, "disjoint", ["good_a", "good_b"], weights="search")
    with pytest.raises(ConfigError) as err:
        from delineo.infer.pipeline.build import build_pipeline

        build_pipeline(pfile, runs / "disjoint.delineo", "cpu", progress=False)
    text = str(err.value)
    assert text.startswith(f"{pfile}: stage seg: members good_a, good_b have no out-of-fold case in common")
    assert "\n" not in text and not (runs / "disjoint.delineo").exists()
    assert main(["-q", "pipeline", "build", str(pfile), "--out", str(runs / "disjoint.delineo")]) == 2
    assert not (runs / "disjoint.delineo").exists()


def _seg(**extra) -> dict:
    stage = {"name": "a", "kind": "segment", "combine": "weighted_mean",
             "members": [{"name": "x", "runs": ["r"]}, {"name": "y", "runs": ["s"]}]}
    stage.update(extra)
    return {"stages": [stage]}


@pytest.mark.parametrize("data, message", [
    (_seg(weights="serch"), "stages[0].weights: Input should be 'given' or 'search'"),
    (_seg(weights=[0.5, 0.5]), "stages[0].weights: Input should be 'given' or 'search'"),
    (_seg(weights="search", combine="mean"), "weights: search needs combine: weighted_mean, not mean"),
    ({"stages": [{"name": "a", "kind": "segment", "combine": "weighted_mean", "weights": "search", "runs": ["r"]}]},
     "weights: search needs at least 2 members"),
    (_seg(weights="search", members=[{"name": "x", "runs": ["r"], "weight": 2}, {"name": "y", "runs": ["s"]}]),
     "weights: search chooses every member's weight, so remove weight from x"),
])
def test_bad_weights_value_is_one_sentence(data, message):
    with pytest.raises(ConfigError) as err:
        pipeline_from_dict(data, "p.yaml")
    text = str(err.value)
    assert message in text and text.startswith("p.yaml: ") and "\n" not in text
    assert pipeline_from_dict(_seg(weights="search"), "p.yaml")[1][0].weights == "search"

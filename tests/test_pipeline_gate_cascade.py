"""Pipelines (issue 10): the classifier gate and the region cascade, with known answers.

Deterministic one-layer "networks" give exact expectations: a segmenter that marks voxels
brighter than 0.5 and a classifier that says "positive" for a slice holding such a voxel.
Then a gate must empty exactly the negative slices (through a reorienting affine), a cascade's
second stage must see only the organ (bright voxels outside it never reach the network, and
nothing comes out outside it), and the threshold search must pick the boundary the data
dictates. An end-to-end run trains a region-restricted stage on phantoms, builds a pipeline
file, predicts and round-trips it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from delineo.config import config_from_dict
from delineo.errors import ConfigError
from delineo.infer.pipeline.cascade import CascadeStage
from delineo.infer.pipeline.gate import GateStage, case_stats, choose_threshold, roc_auc, score_volume
from delineo.infer.pipeline.members import Fold, Member
from delineo.infer.pipeline.stages import CaseData, RunOptions, StageOutput
from delineo.io.image import Image
from delineo.modelfile.checkpoint import ModelMeta
from delineo.preprocess.pipeline import preprocess
from delineo.registry import MODELS
from tests.conftest import phantom_experiment, write_msd

LEVEL = 0.5


class _Bright(torch.nn.Module):
    """Segmenter: foreground where the input is above LEVEL (2 channels: background logit 0)."""

    divisor = 1

    def __init__(self, in_channels: int = 1, out_channels: int = 2, dims: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 1) if dims == 2 else torch.nn.Conv3d(
            in_channels, out_channels, 1)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x.detach().clone())
        return self.conv(x)


class _SliceMax(torch.nn.Module):
    """Classifier: logit 20 x (max of the slice - LEVEL), one sigmoid output."""

    divisor = 1

    def __init__(self, in_channels: int = 1, out_channels: int = 1, dims: int = 2) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(in_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).amax(dim=(2, 3))


class _TinyClassifier(torch.nn.Module):
    """A small trainable slice classifier (two convolutions, global max pooling, one logit)."""

    divisor = 1

    def __init__(self, in_channels: int = 1, out_channels: int = 1, dims: int = 2) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(in_channels, 8, 3, padding=1), torch.nn.ReLU(),
                                        torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(8, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).amax(dim=(2, 3)))


if "test_bright" not in MODELS.names():
    MODELS.register("test_bright")(_Bright)
    MODELS.register("test_slice_max")(_SliceMax)
    MODELS.register("test_tiny_classifier")(_TinyClassifier)


def _member(model_name: str, labels: dict[int, str], task: str = "segmentation", region: dict | None = None,
            out_channels: int = 2) -> Member:
    cfg = {"name": f"t_{model_name}", "data": {"source": {"path": "unused"}},
           "preprocess": {"orientation": "RAS", "crop_foreground": False, "intensity": [{"preset": "none"}],
                          "region": region},
           "sampling": {"mode": "2d", "axis": 2}, "augment": {"flip": {"p": 0.0}},
           "model": {"name": model_name}, "train": {"task": task, "channels_last": False}}
    cfg = config_from_dict(cfg).to_dict()
    meta = ModelMeta(1, out_channels, 2, "2d", [8, 8], 2, 0, labels, ["MR"], 1)
    net = MODELS.build({"name": model_name}, "model", in_channels=1, out_channels=out_channels, dims=2)
    with torch.no_grad():
        net.conv.weight.zero_()
        net.conv.bias.zero_()
        net.conv.weight[-1] = 20.0
        net.conv.bias[-1] = -20.0 * LEVEL
    return Member(model_name, [Fold(cfg, meta.to_dict(), {k: v.clone() for k, v in net.state_dict().items()})])


# an affine that permutes and flips axes: input axis 0 is the inferior-superior axis (2 mm),
# so a classifier slicing its RAS grid along axis 2 slices the input along axis 0, reversed
AFFINE = np.array([[0, 0, 1.0, 5], [0, -1.0, 0, 3], [-2.0, 0, 0, 7], [0, 0, 0, 1]])


def test_gate_empties_exactly_the_negative_slices():
    shape = (9, 12, 10)
    image = np.zeros(shape, np.float32)
    positive = [1, 4, 5, 8]
    for i in positive:
        image[i, 3 + i % 4, 2] = 1.0
    img = Image(image, AFFINE)
    upstream = StageOutput(np.stack([np.zeros(shape), np.ones(shape)]).astype(np.float32), {1: "lesion"},
                           np.ones(shape, np.uint8))
    gate = GateStage("gate", [_member("test_slice_max", {1: "lesion"}, "classification", out_channels=1)],
                     "seg", {1: "lesion"}, threshold=0.5)
    case = CaseData([img], "c", {"seg": upstream})
    out = gate.predict(case, RunOptions())
    expect = np.zeros(shape, bool)
    expect[positive] = True
    assert np.array_equal(out.mask.astype(bool), expect)
    assert np.allclose(out.probs[0][~expect], 1) and np.allclose(out.probs[1][expect], 1)
    assert out.info["gate"]["passed"] == len(positive) and out.info["gate"]["of"] == shape[0]
    # image level: any positive slice lets the whole image through; none stops it whole
    gate_img = GateStage("gate", gate.members, "seg", {1: "lesion"}, threshold=0.5, level="image")
    assert gate_img.predict(case, RunOptions()).mask.all()
    blank = CaseData([Image(np.zeros(shape, np.float32), AFFINE)], "b", {"seg": upstream})
    assert not gate_img.predict(blank, RunOptions()).mask.any()
    # round trip through the stored state
    spec, tensors = gate.to_state()
    again = GateStage.from_state("gate", spec, tensors, torch.device("cpu"))
    assert np.array_equal(again.predict(case, RunOptions()).mask, out.mask)
    with pytest.raises(ConfigError, match="not a classifier"):
        GateStage("g", [_member("test_bright", {1: "lesion"})], "seg", {1: "lesion"})


def test_score_volume_follows_resampling_and_crop():
    from delineo.config import PreprocessConfig

    image = np.zeros((6, 6, 8), np.float32)
    image[:, :, 1:7] = 1.0  # slices 0 and 7 are blank: cropped away by crop_foreground
    cfg = PreprocessConfig(orientation=None, spacing=(1.0, 1.0, 0.5), intensity=[{"preset": "none"}])
    _, _, rec = preprocess([Image(image, np.eye(4))], None, cfg)
    # linear resampling to 16 slices spreads the image over resampled slices 1..14: 14 slices scored
    assert rec.bbox[2] == (1, 15) and rec.resampled_to[2] == 16
    scores = np.arange(14, dtype=np.float32) / 20
    vol = score_volume(scores, rec, 2)
    # input slice k is resampled slice 2k + 1 (nearest, centres aligned) = cropped slice 2k, score k / 10;
    # input slice 7 falls on resampled slice 15, outside the crop: 0
    assert vol.shape == (6, 6, 8)
    assert np.allclose(vol, np.array([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0])[None, None])
    assert np.array_equal(score_volume(np.array([0.2, 0.7]), rec, None), np.full((6, 6, 8), 0.7, np.float32))


def _stats(slice_scores, fp_slices, ref_slices, hit_slices, n=6, size=4):
    """A case of ``n`` slices (axis 2): reference on ref_slices, the segmenter right on
    hit_slices and wrong (false positive) on fp_slices."""
    shape = (size, size, n)
    ref = np.zeros(shape, np.uint8)
    pred = np.zeros(shape, np.uint8)
    for s in ref_slices:
        ref[:2, :2, s] = 1
    for s in hit_slices:
        pred[:2, :2, s] = 1
    for s in fp_slices:
        pred[2:, 2:, s] = 1
    vol = np.broadcast_to(np.asarray(slice_scores, np.float32)[None, None], shape)
    truth = np.zeros(n, bool)
    truth[list(ref_slices)] = True
    return case_stats(vol, pred, ref, [1], np.asarray(slice_scores), truth)


def test_threshold_search_known_answers():
    # the segmenter is right on the positive slices and makes false positives on negatives;
    # negatives score <= 0.3, positives >= 0.6: any threshold in (0.3, 0.6) gives Dice 1
    a = _stats([0.1, 0.3, 0.6, 0.9, 0.2, 0.7], fp_slices=[0, 1, 4], ref_slices=[2, 3, 5], hit_slices=[2, 3, 5])
    b = _stats([0.05, 0.25, 0.8, 0.1, 0.1, 0.1], fp_slices=[0, 1], ref_slices=[2], hit_slices=[2])
    t, rows, summary = choose_threshold([a, b])
    assert 0.3 < t < 0.6 and t == pytest.approx(0.45)
    assert summary["dice_gated"] == pytest.approx(1.0) and summary["dice_ungated"] < 0.75
    assert summary["sensitivity"] == 1.0 and summary["specificity"] == 1.0 and summary["auc"] == 1.0
    assert any(r["chosen"] for r in rows) and rows[0]["threshold"] == 0.0
    # a positive slice with a low score (0.2) that the segmenter misses anyway: Dice prefers
    # t = 0.45 (dropping it costs nothing); a sensitivity floor of 1 forces t below 0.2
    c = _stats([0.1, 0.2, 0.9, 0.3, 0.05, 0.05], fp_slices=[0, 3], ref_slices=[1, 2], hit_slices=[2])
    t_dice, _, s_dice = choose_threshold([c])
    assert 0.3 < t_dice < 0.9 and s_dice["sensitivity"] == 0.5
    t_sens, _, s_sens = choose_threshold([c], min_sensitivity=1.0)
    assert 0.1 < t_sens < 0.2 and s_sens["sensitivity"] == 1.0 and s_sens["dice_gated"] < s_dice["dice_gated"]
    assert roc_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1], bool)) == pytest.approx(0.75)


def _cascade_case():
    shape = (12, 16, 10)
    organ = np.zeros(shape, bool)
    organ[3:9, 4:12, 2:8] = True
    image = np.zeros(shape, np.float32)
    image[organ] = 0.2
    lesion = np.zeros(shape, bool)
    lesion[5:7, 6:8, 4:6] = True
    image[lesion] = 1.0
    image[2, 6:8, 4] = 1.0  # bright, just outside the organ (inside the box margin)
    image[11, 15, 9] = 1.0  # bright, far outside
    organ_out = StageOutput(np.stack([~organ, organ]).astype(np.float32), {1: "liver"}, organ.astype(np.uint8))
    return Image(image, AFFINE), organ, lesion, organ_out


def test_cascade_stage_sees_only_the_organ_and_maps_back_exactly():
    img, organ, lesion, organ_out = _cascade_case()
    region = {"labels": [1], "margin_mm": 4, "background": "mean"}
    member = _member("test_bright", {2: "lesion"}, region=region)
    stage = CascadeStage("lesion", [member], "liver", organ_names={1: "liver"})
    case = CaseData([img], "c", {"liver": organ_out})
    out = stage.predict(case, RunOptions())
    assert np.array_equal(out.mask == 2, lesion) and set(np.unique(out.mask)) == {0, 2}
    # what the network saw: the organ's box only, nothing bright but the lesion
    net = stage.predictor(0, 0, torch.device("cpu")).model
    seen = torch.cat([s.flatten() for s in net.seen])
    assert int((seen > LEVEL).sum()) == int(lesion.sum())
    assert sum(s.shape[0] for s in net.seen) < img.array.shape[0]  # fewer slices than the image: cropped
    # keep_organ: liver 1 + lesion 2 in one mask, probabilities still sum to 1
    both = CascadeStage("lesion", [member], "liver", organ_names={1: "liver"}, keep_organ=True)
    out2 = both.predict(case, RunOptions())
    expect = np.where(lesion, 2, np.where(organ, 1, 0))
    assert np.array_equal(out2.mask, expect) and out2.labels == {1: "liver", 2: "lesion"}
    assert np.allclose(out2.probs.sum(0), 1, atol=1e-5)
    # a member trained on whole images sees the bright voxels outside, but nothing survives there
    whole = CascadeStage("lesion", [_member("test_bright", {2: "lesion"})], "liver", organ_names={1: "liver"})
    assert np.array_equal(whole.predict(case, RunOptions()).mask == 2, lesion)
    # an empty organ: an empty output, the network is not run
    empty = StageOutput(np.stack([np.ones(organ.shape), np.zeros(organ.shape)]).astype(np.float32), {1: "liver"},
                        np.zeros(organ.shape, np.uint8))
    assert not stage.predict(CaseData([img], "e", {"liver": empty}), RunOptions()).mask.any()
    spec, tensors = both.to_state()
    again = CascadeStage.from_state("lesion", spec, tensors, torch.device("cpu"))
    assert np.array_equal(again.predict(CaseData([img], "c", {"liver": organ_out}), RunOptions()).mask, expect)
    with pytest.raises(ConfigError, match="in both"):
        CascadeStage("x", [_member("test_bright", {1: "lesion"})], "liver", organ_names={1: "liver"}, keep_organ=True)


@pytest.fixture(scope="module")
def cascade_runs(tmp_path_factory) -> Path:
    """Phantom runs: a union segmenter (stage 1) and a region-restricted 2-label stage 2."""
    from delineo.train.loop import train

    root = tmp_path_factory.mktemp("cascade")
    data = write_msd(root / "phantom", n=10)
    one = phantom_experiment(data, epochs=4, iterations_per_epoch=10)
    one.update(name="organ", model={"name": "unet", "filters": [8, 16], "norm": "batch", "out_channels": 1})
    two = phantom_experiment(data, epochs=4, iterations_per_epoch=10)
    two["name"] = "inside"
    two["preprocess"]["region"] = {"labels": [1, 2], "margin_mm": 3, "background": "mean"}
    for cfg in (one, two):
        train(config_from_dict(cfg), root / "runs", fold=0, progress=False)
    return root


def test_region_training_and_cascade_pipeline_end_to_end(cascade_runs: Path, tmp_path: Path):
    import json

    from delineo.data.cache import CaseCache
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.io.files import read_image
    from delineo.train.loop import dice

    run2 = cascade_runs / "runs" / "inside" / "fold_0"
    log = (run2 / "log.csv").read_text().splitlines()
    assert float(log[-1].split(",")[log[0].split(",").index("val_dice")]) > 0.8
    # the cache holds the organ box, not the whole image
    cfg2 = config_from_dict(yaml.safe_load((run2 / "config.yaml").read_text()))
    cache = CaseCache(cascade_runs / "runs" / "inside" / "cache", cfg2.preprocess, {1: "one", 2: "two"}, (0, 1))
    entry = json.loads(next(cache.dir.glob("*.json")).read_text())
    box = entry["region"]["box"]
    assert all(b - a < s for (a, b), s in zip(box, entry["region"]["shape"]))
    pfile = tmp_path / "cascade.yaml"
    pfile.write_text(yaml.safe_dump({"name": "phantom_cascade", "stages": [
        {"name": "organ", "kind": "segment", "runs": [str(cascade_runs / "runs" / "organ" / "fold_0")]},
        {"name": "parts", "kind": "cascade", "organ": "organ", "runs": [str(run2)]}]}))
    written, pipe = build_pipeline(pfile, tmp_path / "m.delineo", device="cpu", progress=False)
    case_img = cascade_runs / "phantom" / "imagesTr" / "ph_000_0000.nii.gz"
    ref = read_image(cascade_runs / "phantom" / "labelsTr" / "ph_000.nii.gz").array
    image = read_image(case_img)
    case = pipe.run_case(CaseData([image], "ph_000"))
    organ, parts = case.outputs["organ"].mask, case.outputs["parts"].mask
    assert parts.shape == ref.shape and not np.any(parts[organ == 0])  # kept inside the predicted organ
    assert np.mean([dice(parts == v, ref == v) for v in (1, 2)]) > 0.75
    loaded = Pipeline.load(written, "cpu")
    mask, _, _ = loaded.predict_images([image])
    assert np.array_equal(mask.array, parts)
    assert any("cascade inside stage organ" in line for line in loaded.describe())
    # on its own, a region-trained run refuses whole images (it needs an organ) in one sentence
    from delineo.errors import InputError
    from delineo.infer.predictor import Predictor

    with pytest.raises(InputError, match="restricted to an organ"):
        Predictor.from_checkpoint(run2, device="cpu").predict_images([image])


def test_gate_pipeline_end_to_end_threshold_searched_out_of_fold(tmp_path: Path):
    """A positive-only segmenter and a slice classifier trained on phantoms; the gate's
    threshold is searched on the validation cases of fold 0 (the runs' out-of-fold cases)."""
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.io.files import read_image
    from delineo.train.loop import train

    data = write_msd(tmp_path / "phantom", n=10)
    seg = phantom_experiment(data, epochs=3, iterations_per_epoch=10, val_every=10)
    seg.update(name="seg")
    seg["sampling"]["positive_only"] = True
    cls = phantom_experiment(data, epochs=3, iterations_per_epoch=20, val_every=10)
    cls.update(name="cls", model={"name": "test_tiny_classifier"}, loss={"name": "soft_f1"})
    cls["train"].update(task="classification", optimizer={"name": "adam", "lr": 0.01})
    cls["sampling"].update(foreground_fraction=0.5)
    for cfg in (seg, cls):
        train(config_from_dict(cfg), tmp_path / "runs", fold=0, progress=False)
    pfile = tmp_path / "gate.yaml"
    pfile.write_text(yaml.safe_dump({"name": "phantom_gate", "stages": [
        {"name": "seg", "kind": "segment", "runs": ["runs/seg/fold_0"]},
        {"name": "gate", "kind": "gate", "runs": ["runs/cls/fold_0"], "threshold": "search"}]}))
    written, pipe = build_pipeline(pfile, tmp_path / "g.delineo", device="cpu", progress=False)
    gate = pipe.stages[-1]
    summary = gate.tables["summary"]
    val = json_cases(tmp_path / "runs" / "cls" / "fold_0")
    assert summary["n_cases"] == len(val) == 2 and summary["n_slices"] == 2 * 20
    assert summary["dice_gated"] >= summary["dice_ungated"] and summary["auc"] > 0.8
    assert pipe.tables["gate.threshold"] == gate.tables["threshold"]
    # the saved pipeline empties exactly the slices whose score is under the chosen threshold
    loaded = Pipeline.load(written, "cpu")
    image = read_image(data / "imagesTr" / f"{val[0]}_0000.nii.gz")
    case = loaded.run_case(CaseData([image], val[0]))
    scores = np.asarray(case.outputs["gate"].info["gate"]["scores"])
    out, before = case.outputs["gate"].mask, case.outputs["seg"].mask
    for k, s in enumerate(scores):
        assert np.array_equal(out[..., k], before[..., k] if s >= gate.threshold else 0 * before[..., k])


def json_cases(run: Path) -> list[str]:
    import json

    return json.loads((run / "cases.json").read_text())["val"]


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
PIPELINE_EXAMPLES = {"liver_cascade_pipeline": ("liver", "liver_lesion"),
                     "pneumothorax_gate_pipeline": ("pneumothorax_unet", "pneumothorax_classifier")}


@pytest.mark.parametrize("name", sorted(PIPELINE_EXAMPLES))
def test_example_pipelines_validate_and_point_at_example_runs(name: str):
    from delineo.config import load_config
    from delineo.infer.pipeline.config import load_pipeline_config

    text = (EXAMPLES / f"{name}.yaml").read_text()
    assert text.startswith("#")
    cfg, sections = load_pipeline_config(EXAMPLES / f"{name}.yaml")
    runs = [r for s in sections for r in (getattr(s, "runs", None) or [])]
    assert [r.split("/")[2] for r in runs] == list(PIPELINE_EXAMPLES[name])
    for exp in PIPELINE_EXAMPLES[name]:  # each stage's experiment trains as is on embedded data
        ecfg = load_config(EXAMPLES / f"{exp}.yaml")
        assert ecfg.name == exp and "sample_data" in ecfg.data.source.path
    lesion = load_config(EXAMPLES / "liver_lesion.yaml")
    assert lesion.preprocess.region.labels == [1, 2] and lesion.data.labels == {2: "tumour"}


def _quick_example_runs(root: Path, names: list[str], extra: dict[str, list[str]]) -> None:
    from delineo.config import load_config
    from delineo.train.loop import train

    quick = ["data.max_cases=8", "train.epochs=2", "train.iterations_per_epoch=3", "train.num_threads=1",
             "train.device=cpu", "sampling.batch_size=2", "train.early_stopping_patience=null",
             "train.val_every=100"]
    for name in names:  # fold 0 only: these pipelines search nothing, so no out-of-fold cases are needed
        train(load_config(EXAMPLES / f"{name}.yaml", quick + extra.get(name, [])), root / "runs", fold=0,
              progress=False)


def _example_pipeline_here(name: str, root: Path) -> Path:
    data = yaml.safe_load((EXAMPLES / f"{name}.yaml").read_text())
    for stage in data["stages"]:
        if "runs" in stage:
            stage["runs"] = [r.replace("../runs/", "runs/") for r in stage["runs"]]
    out = root / f"{name}.yaml"
    out.write_text(yaml.safe_dump(data))
    return out


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_liver_cascade_example_builds_and_predicts_on_the_ct_sample(tmp_path: Path):
    """examples/liver_cascade_pipeline.yaml with its two experiments (shrunk: ResNet-18, small
    U-Net) on the embedded CT sample: builds, predicts, maps back exactly (liver label = the
    cleaned stage-1 liver, nothing outside it, the CT's own grid)."""
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.io.files import read_image

    shrink = {"liver": ["model.backbone=resnet18", "model.channels=32", "sampling.patch_size=[64,64]"],
              "liver_lesion": ["model.filters=[8,16,32]", "preprocess.region.size=[64,64]",
                               "sampling.patch_size=[64,64]"]}
    _quick_example_runs(tmp_path, ["liver", "liver_lesion"], shrink)
    written, _ = build_pipeline(_example_pipeline_here("liver_cascade_pipeline", tmp_path),
                                tmp_path / "liver.delineo", device="cpu", progress=False)
    pipe = Pipeline.load(written, "cpu")
    assert pipe.labels == {1: "liver", 2: "tumour"}
    sample = EXAMPLES.parent / "delineo" / "sample_data" / "ct_liver" / "imagesTr" / "liver_003_0000.nii.gz"
    image = read_image(sample)
    case = pipe.run_case(CaseData([image], "liver_003"))
    liver, out = case.outputs["liver_clean"].mask, case.outputs["lesion"].mask
    assert out.shape == image.spatial_shape and np.array_equal(out == 1, (liver > 0) & (out != 2))
    assert not np.any(out[liver == 0])
    mask, _, _ = pipe.predict_images([image])
    assert np.array_equal(mask.array, out) and np.allclose(mask.affine, image.affine)


@pytest.mark.soak
@pytest.mark.timeout(1800)
def test_pneumothorax_gate_example_builds_and_predicts_on_the_sample(tmp_path: Path):
    """examples/pneumothorax_gate_pipeline.yaml with its two experiments (shrunk to ResNet-18)
    on the embedded hippocampus stand-in: the threshold is searched on fold 0's validation
    cases, and the saved pipeline empties exactly the slices scored under it."""
    from delineo.infer.pipeline.build import build_pipeline
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.io.files import read_image

    shrink = {"pneumothorax_unet": ["model.backbone=resnet18", "model.decoder_channels=[32,16,16,8,8]",
                                    "sampling.patch_size=[64,64]"],
              "pneumothorax_classifier": ["model.backbone=resnet18", "sampling.patch_size=[64,64]"]}
    _quick_example_runs(tmp_path, ["pneumothorax_unet", "pneumothorax_classifier"], shrink)
    written, built = build_pipeline(_example_pipeline_here("pneumothorax_gate_pipeline", tmp_path),
                                    tmp_path / "ptx.delineo", device="cpu", progress=False)
    summary = built.stages[-1].tables["summary"]
    assert summary["n_cases"] >= 1 and summary["dice_gated"] >= summary["dice_ungated"]
    pipe = Pipeline.load(written, "cpu")
    val = json_cases(tmp_path / "runs" / "pneumothorax_unet" / "fold_0")
    image = read_image(EXAMPLES.parent / "delineo" / "sample_data" / "hippocampus" / "imagesTr" /
                       f"{val[0]}_0000.nii.gz")
    case = pipe.run_case(CaseData([image], val[0]))
    scores = np.asarray(case.outputs["gate"].info["gate"]["scores"])
    out, before = case.outputs["gate"].mask, case.outputs["unet"].mask
    t = pipe.stages[-1].threshold
    assert len(scores) == image.spatial_shape[2]
    for k, s in enumerate(scores):
        assert np.array_equal(out[..., k], before[..., k] if s >= t else np.zeros_like(before[..., k]))

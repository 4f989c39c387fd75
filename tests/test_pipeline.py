"""Pipelines (issue 10, framework): combine rules with known answers, the learned fusion, the
post-processing search, the .delineo file (round trip, tampering, version), pipeline-file
errors, and build -> info -> predict end to end on phantom runs."""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from delineo.cli import main
from delineo.config import config_from_dict
from delineo.errors import ConfigError, InputError
from delineo.infer.pipeline.config import pipeline_from_dict
from delineo.infer.pipeline.segment import fuse, train_fusion, vote
from delineo.infer.pipeline.stages import mask_from_probs
from delineo.infer.pipeline.tta import Augmentation, Welford, entropy
from delineo.postprocess.search import SearchCase, apply_steps, search_steps
from tests.conftest import phantom_experiment, write_msd


def _probs(*channels) -> np.ndarray:
    return np.asarray(channels, dtype=np.float32)[:, None, None, :]  # (K, 1, 1, N)


def test_vote_majority_and_tie_rule():
    # three voxels, labels 0/1/2; three members for the majority, two for the ties
    a = _probs([0.1, 0.1, 0.5], [0.8, 0.3, 0.25], [0.1, 0.6, 0.25])
    b = _probs([0.1, 0.7, 0.5], [0.2, 0.2, 0.25], [0.7, 0.1, 0.25])
    c = _probs([0.2, 0.1, 0.1], [0.7, 0.1, 0.1], [0.1, 0.8, 0.8])
    frac, seg = vote([a, b, c], [1, 2])
    assert seg[0, 0].tolist() == [1, 2, 0]  # voxel 0: votes 1,2,1 -> 1; voxel 1: 2,0,2 -> 2; voxel 2: 0,0,2 -> 0
    assert frac[:, 0, 0, 0].tolist() == pytest.approx([0, 2 / 3, 1 / 3])
    # two members: voxel 0 ties 1 vs 2 on votes, label 1 has the higher mean probability (0.5 vs 0.4)
    # voxel 1 ties 0 vs 2, background has the higher mean; voxel 2 ties exactly -> smaller label (0)
    frac, seg = vote([a, b], [1, 2])
    assert seg[0, 0].tolist() == [1, 0, 0]
    # exact tie between two labels (no background vote): the smaller label value wins
    x = _probs([0.0], [0.6], [0.4])
    y = _probs([0.0], [0.4], [0.6])
    assert vote([x, y], [3, 7])[1].ravel().tolist() == [3]


def test_mask_from_probs_thresholds():
    p = _probs([0.5, 0.35, 0.2], [0.3, 0.45, 0.2], [0.2, 0.2, 0.6])
    assert mask_from_probs(p, [1, 2]).ravel().tolist() == [0, 1, 2]
    assert mask_from_probs(p, [1, 2], {1: 0.25}).ravel().tolist() == [1, 1, 2]
    assert mask_from_probs(p, [1, 2], {2: 0.7}).ravel().tolist() == [0, 1, 0]
    two = _probs([0.5, 0.6], [0.5, 0.4])
    assert mask_from_probs(two, [1], {1: 0.5}).ravel().tolist() == [1, 0]  # p >= t, as Predictor does


def test_fusion_learns_the_better_member():
    rng = np.random.default_rng(0)
    refs, cases = [], []
    for _ in range(4):
        ref = (rng.random((16, 16, 8)) < 0.3).astype(np.uint8)
        good = np.clip(ref + rng.normal(0, 0.25, ref.shape), 0, 1).astype(np.float32)
        bad = rng.random(ref.shape).astype(np.float32)  # knows nothing
        refs.append(ref)
        cases.append([np.stack([1 - good, good]), np.stack([1 - bad, bad])])
    fusion = train_fusion(cases, refs, [1], steps=200)
    w = fusion["weight"].reshape(2, 4)
    good_w, bad_w = float(w[1, 1] - w[1, 0]), float(w[1, 3] - w[1, 2])
    assert good_w > 3 * abs(bad_w)
    fused = mask_from_probs(fuse(cases[0], fusion), [1])
    mean = mask_from_probs(np.mean(cases[0], axis=0), [1])
    d = lambda m: 2 * np.sum((m == 1) & (refs[0] == 1)) / (np.sum(m == 1) + np.sum(refs[0] == 1))  # noqa: E731
    assert d(fused) > d(mean) + 0.05 and d(fused) > 0.9


def test_postprocess_search_keeps_largest_rejects_fill_holes():
    cases = []
    for shift in range(3):
        ref = np.zeros((30, 30, 10), bool)
        ref[5 + shift:20 + shift, 5:20, 2:8] = True
        ref[10 + shift:15 + shift, 10:15, 3:7] = False  # a real, enclosed cavity
        pred = ref.copy()
        pred[26:29, 26:29, 4:6] = True  # a spurious blob far away
        cases.append(SearchCase(pred.astype(np.uint8), ref.astype(np.uint8), (1.0, 1.0, 1.0)))
    chosen, table = search_steps(cases, [1], [{"name": "largest"}, {"name": "fill_holes"}])
    assert chosen == {1: [{"name": "largest"}]}
    kept = {row["step"]: row["kept"] for row in table}
    assert kept["largest"] is True and kept["fill_holes"] is False
    assert table[1]["dice"] == pytest.approx(1.0) and table[2]["dice"] < 1.0
    # size, fraction and distance filters on a known layout (1 mm voxels)
    m = np.zeros((40, 10, 10), bool)
    m[0:10, 0:5, 0:5] = True  # 250 voxels, the largest
    m[12:14, 0:2, 0:2] = True  # 8 voxels, 2 mm from the largest
    m[35:38, 0:3, 0:3] = True  # 27 voxels, 26 mm away
    assert apply_steps(m, [{"name": "min_size", "voxels": 10}], (1, 1, 1)).sum() == 277
    assert apply_steps(m, [{"name": "min_size", "ml": 0.01}], (1, 1, 1)).sum() == 277
    assert apply_steps(m, [{"name": "fraction", "fraction": 0.05}], (1, 1, 1)).sum() == 277
    assert apply_steps(m, [{"name": "near_largest", "mm": 5}], (1, 1, 1)).sum() == 258
    diag = np.zeros((3, 3, 1), bool)
    diag[0, 0, 0] = diag[1, 1, 0] = True
    diag[2, 2, 0] = diag[2, 1, 0] = diag[2, 0, 0] = True
    assert apply_steps(diag, [{"name": "largest", "connectivity": 8}], (1, 1, 1)).sum() == 5
    assert apply_steps(diag, [{"name": "largest", "connectivity": 4}], (1, 1, 1)).sum() == 4  # (0, 0) drops


def test_tta_inverse_and_uncertainty():
    x = np.arange(2 * 4 * 6 * 5, dtype=np.float32).reshape(2, 4, 6, 5)
    for aug in (Augmentation((0, 2), 0), Augmentation((), 1, (1, 2)), Augmentation((1,), 3, (0, 1))):
        assert np.array_equal(aug.inverse(aug.forward(x)), x)
    w = Welford()
    for p in (np.array([[1.0], [0.0]]), np.array([[0.0], [1.0]])):
        w.add(p)
    assert w.variance()[0] == pytest.approx(0.5)  # two channels, each variance 0.25
    assert entropy(np.array([[0.5], [0.5]]))[0] == pytest.approx(1.0)
    assert entropy(np.array([[1.0], [0.0]]))[0] == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("data, message", [
    ({"stages": [{"name": "a", "kind": "segment", "runs": ["r"], "combin": "mean"}]}, "did you mean 'combine'"),
    ({"stages": [{"name": "a", "kind": "segmnt", "runs": ["r"]}]}, "did you mean 'segment'"),
    ({"stages": [{"name": "a", "kind": "segment", "runs": ["r"], "members": [{"runs": ["r"]}]}]}, "not both"),
    ({"stages": [{"name": "a", "kind": "segment", "runs": ["r"], "combine": "vote"}]}, "at least 2 members"),
    ({"stages": [{"name": "a", "kind": "segment", "runs": ["r"]},
                 {"name": "b", "kind": "postprocess", "input": "c"}]}, "not an earlier stage"),
    ({"stages": [{"name": "a", "kind": "segment", "runs": ["r"]},
                 {"name": "a", "kind": "postprocess"}]}, "used by an earlier stage"),
    ({"stages": [{"name": "a", "kind": "segment", "runs": ["r"]},
                 {"name": "b", "kind": "postprocess", "connectivity": 10}]}, "connectivity"),
    ({"stages": []}, "stages"),
    ({"stage": []}, "did you mean 'stages'"),
])
def test_pipeline_file_errors_are_one_sentence(data, message):
    with pytest.raises(ConfigError) as err:
        pipeline_from_dict(data, "p.yaml")
    text = str(err.value)
    assert message in text and text.startswith("p.yaml: ") and "\n" not in text


@pytest.fixture(scope="module")
def phantom_runs(tmp_path_factory) -> Path:
    """Two folds of a tiny 2D phantom experiment trained with flips along both in-plane axes."""
    from delineo.train.loop import train

    root = tmp_path_factory.mktemp("pipe")
    data = write_msd(root / "data", n=6)
    raw = phantom_experiment(data, epochs=2, iterations_per_epoch=3)
    raw["data"]["folds"] = 2
    raw["augment"]["flip"] = {"p": 0.5, "axes": [0, 1]}
    cfg = config_from_dict(raw)
    for fold in (0, 1):
        train(cfg, root / "runs", fold, progress=False)
    return root


def _predict(model: Path, image: Path, out: Path, *extra: str) -> None:
    assert main(["-q", "predict", str(model), str(image), str(out), *extra]) == 0


def test_build_info_predict_round_trip(phantom_runs: Path, tmp_path: Path, capsys):
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.io import read_image

    image = phantom_runs / "data" / "imagesTr" / "ph_000_0000.nii.gz"
    # 1. one run as a pipeline predicts exactly what the run folder predicts
    single = tmp_path / "single.yaml"
    single.write_text(yaml.safe_dump({"name": "single", "stages": [
        {"name": "seg", "kind": "segment", "runs": [str(phantom_runs / "runs" / "phantom" / "fold_0")]}]}))
    assert main(["-q", "pipeline", "build", str(single), "--out", str(tmp_path / "single.delineo")]) == 0
    _predict(phantom_runs / "runs" / "phantom" / "fold_0", image, tmp_path / "run.nii.gz", "--probabilities")
    _predict(tmp_path / "single.delineo", image, tmp_path / "pipe.nii.gz", "--probabilities")
    a, b = read_image(tmp_path / "run.nii.gz"), read_image(tmp_path / "pipe.nii.gz")
    assert np.array_equal(a.array, b.array) and np.allclose(a.affine, b.affine)
    pa = read_image(tmp_path / "run_probabilities.nii.gz", allow_4d=True).array
    pb = read_image(tmp_path / "pipe_probabilities.nii.gz", allow_4d=True).array
    assert np.allclose(pa, pb, atol=1e-6)

    # 2. two folds, TTA and post-processing searched on out-of-fold cases; file == in memory
    full = tmp_path / "full.yaml"
    full.write_text(yaml.safe_dump({"name": "full", "colours": {1: [255, 0, 0]}, "stages": [
        {"name": "seg", "kind": "segment", "runs": ["../" * 0 + str(phantom_runs / "runs" / "phantom" / "fold_*")],
         "tta": {"flip": "search"}},
        {"name": "clean", "kind": "postprocess", "threshold": "search", "steps": "search"}]}))
    from delineo.infer.pipeline.build import build_pipeline

    path, built = build_pipeline(full, tmp_path / "full.delineo", "cpu", progress=False)
    tables = built.tables
    assert len(tables["seg.tta"]) == 4  # no flip, flip 0, flip 1, flip 0+1 (2D in-plane axes)
    assert {r["n_cases"] for r in tables["seg.tta"]} == {6}  # every case, each out of fold
    assert "clean.steps" in tables and "clean.thresholds" in tables
    loaded = Pipeline.load(path, "cpu")
    img = read_image(image)
    m1, p1, _ = built.predict_images([img])
    m2, p2, u2 = loaded.predict_images([img], uncertainty="variance")
    assert np.array_equal(m1.array, m2.array) and np.array_equal(p1.array, p2.array)
    assert u2.array.shape == img.array.shape and 0 <= u2.array.min() and u2.array.max() <= 0.5 + 1e-6
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "checksums verified" in out and "segment, 1 member(s)" in out and "postprocess" in out
    # predict writes the uncertainty map beside the mask, in every output format of a file input
    _predict(path, image, tmp_path / "u" / "mask.nrrd", "--uncertainty", "entropy")
    assert (tmp_path / "u" / "mask.nrrd").is_file() and (tmp_path / "u" / "mask_uncertainty.nrrd").is_file()
    # evaluate scores the pipeline on chosen cases of a dataset; the summary matches the written masks
    ev = tmp_path / "ev"
    assert main(["-q", "evaluate", str(path), str(phantom_runs / "data"), "--cases", "ph_000,ph_003",
                 "--out", str(ev)]) == 0
    summary = json.loads((ev / "metrics" / "summary.json").read_text())
    assert summary["n_cases"] == 2 and summary["seconds_per_case"] > 0
    dices = []
    for cid in ("ph_000", "ph_003"):
        pred = read_image(ev / "predictions" / f"{cid}.nii.gz").array
        ref = read_image(phantom_runs / "data" / "labelsTr" / f"{cid}.nii.gz").array
        dices.append(2 * np.sum((pred == 1) & (ref == 1)) / max(1, np.sum(pred == 1) + np.sum(ref == 1)))
    assert summary["labels"]["one"]["dice"]["mean"] == pytest.approx(np.mean(dices), abs=1e-6)
    # lesions as for a run: one row per reference and per predicted component (full connectivity)
    from scipy import ndimage

    from delineo.evaluate.lesions import read_lesion_table

    table = read_lesion_table(ev / "metrics" / "lesions.csv")
    for cid in ("ph_000", "ph_003"):
        pred = read_image(ev / "predictions" / f"{cid}.nii.gz").array
        ref = read_image(phantom_runs / "data" / "labelsTr" / f"{cid}.nii.gz").array
        for side, arr in (("reference", ref), ("prediction", pred)):
            for value, name in ((1, "one"), (2, "two")):
                comps, n = ndimage.label(arr == value, structure=np.ones((3, 3, 3)))
                mine = sorted(r["voxels"] for r in table if r["case"] == cid and r["side"] == side
                              and r["label"] == name)
                assert mine == sorted(np.bincount(comps.ravel())[1:].tolist()), (cid, side, name)
    assert "lesions" in summary
    ev_off = tmp_path / "ev_off"
    assert main(["-q", "evaluate", str(path), str(phantom_runs / "data"), "--cases", "ph_000",
                 "--lesions", "off", "--out", str(ev_off)]) == 0
    assert not (ev_off / "metrics" / "lesions.csv").exists()


def _rewrite(src: Path, dst: Path, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, change(info.filename, zin.read(info.filename)))


def test_tampered_or_foreign_files_are_refused(phantom_runs: Path, tmp_path: Path):
    from delineo.modelfile.pipeline_file import read_pipeline_file, sha256

    spec = tmp_path / "p.yaml"
    spec.write_text(yaml.safe_dump({"stages": [
        {"name": "seg", "kind": "segment", "runs": [str(phantom_runs / "runs" / "phantom" / "fold_1")]}]}))
    good = tmp_path / "good.delineo"
    assert main(["-q", "pipeline", "build", str(spec), "--out", str(good)]) == 0
    read_pipeline_file(good)

    def flip_byte(name, data):
        if name.startswith("tensors/"):
            data = bytearray(data)
            data[len(data) // 2] ^= 0xFF
            return bytes(data)
        return data

    bad = tmp_path / "bad.delineo"
    _rewrite(good, bad, flip_byte)
    with pytest.raises(InputError, match="checksum mismatch for tensors/0.pt"):
        read_pipeline_file(bad)

    def future(name, data):
        if name == "manifest.json":
            m = json.loads(data)
            m["format"] = "delineo-pipeline/2"
            return json.dumps(m).encode()
        if name == "manifest.sha256":
            return b""
        return data

    newer = tmp_path / "newer.delineo"
    _rewrite(good, newer, future)
    with zipfile.ZipFile(newer) as z:
        text = z.read("manifest.json")
    _rewrite(newer, newer.with_name("newer2.delineo"), lambda n, d: sha256(text).encode() if n == "manifest.sha256" else d)
    with pytest.raises(InputError, match="format 'delineo-pipeline/2'.*not supported"):
        read_pipeline_file(newer.with_name("newer2.delineo"))

    # a pickled object instead of tensors, with a matching checksum: refused, not executed
    class Boom:
        def __reduce__(self):
            return (print, ("code ran",))

    buf = io.BytesIO()
    torch.save({"x": Boom()}, buf)
    evil = buf.getvalue()

    def swap(name, data):
        if name.startswith("tensors/"):
            return evil
        if name == "manifest.json":
            m = json.loads(data)
            m["entries"]["tensors/0.pt"] = sha256(evil)
            return json.dumps(m).encode()
        return data

    step1 = tmp_path / "evil1.delineo"
    _rewrite(good, step1, swap)
    with zipfile.ZipFile(step1) as z:
        text = z.read("manifest.json")
    evil_file = tmp_path / "evil.delineo"
    _rewrite(step1, evil_file, lambda n, d: sha256(text).encode() if n == "manifest.sha256" else d)
    with pytest.raises(InputError, match="refused tensors/0.pt"):
        read_pipeline_file(evil_file)

    trav = tmp_path / "trav.delineo"
    _rewrite(good, trav, lambda n, d: d)
    with zipfile.ZipFile(trav, "a") as z:
        z.writestr("../../escape.txt", b"x")
    with pytest.raises(InputError, match="not a plain relative path"):
        read_pipeline_file(trav)
    # the CLI says it in one sentence and exits 2
    assert main(["predict", str(bad), str(phantom_runs / "data" / "imagesTr" / "ph_000_0000.nii.gz"),
                 str(tmp_path / "x.nii.gz")]) == 2
    assert not (tmp_path / "x.nii.gz").exists()


def test_example_pipeline_file_validates():
    from delineo.infer.pipeline.config import load_pipeline_config

    cfg, sections = load_pipeline_config(Path(__file__).parents[1] / "examples" / "hippocampus_ensemble_pipeline.yaml")
    assert [s.kind for s in sections] == ["segment", "postprocess"] and sections[0].tta.flip == "search"


def test_pipeline_writes_dicom_outputs_with_its_colours(tmp_path: Path):
    """A .delineo file through predict's DICOM writers on the real CT series; a hand-built
    network that labels every voxel 1 gives a known mask."""
    from tests.conftest import needs_shared

    data = needs_shared()
    import pydicom

    from delineo.infer.pipeline.members import Fold, Member
    from delineo.infer.pipeline.runner import Pipeline
    from delineo.infer.pipeline.segment import SegmentStage
    from delineo.infer.predictor import build_model
    from delineo.io.dicom import read_dicom_series
    from delineo.io.dicom_seg import read_dicom_seg
    from delineo.modelfile.checkpoint import ModelMeta

    raw = phantom_experiment(tmp_path)
    raw["preprocess"]["intensity"] = [{"preset": "ct", "window": [-250, 250]}]
    cfg = config_from_dict(raw)
    meta = ModelMeta(1, 2, 2, "2d", [64, 64], 2, 0, {1: "liver"}, ["CT"], 16)
    state = {k: torch.zeros_like(v) for k, v in build_model(cfg, meta).state_dict().items()}
    last_bias = [k for k, v in state.items() if k.endswith("bias") and v.shape == (2,)][-1]
    state[last_bias] = torch.tensor([0.0, 5.0])
    for k in state:
        if k.endswith("running_var"):
            state[k] = torch.ones_like(state[k])
    pipe = Pipeline("all-liver", [SegmentStage("seg", [Member("m", [Fold(cfg.to_dict(), meta.to_dict(), state)])])],
                    colours={1: [10, 200, 30]})
    model = pipe.save(tmp_path / "all.delineo")
    src = data / "ct-abdomen" / "dicom"
    ct = read_dicom_series(src)
    _predict(model, src, tmp_path / "seg.dcm", "--format", "dicom-seg")
    seg = read_dicom_seg(tmp_path / "seg.dcm", ct, labels={1: "liver"})
    assert seg.same_grid(ct) and (seg.array == 1).all()
    _predict(model, src, tmp_path / "rt.dcm", "--format", "rtstruct")
    rt = pydicom.dcmread(tmp_path / "rt.dcm")
    assert [int(c) for c in rt.ROIContourSequence[0].ROIDisplayColor] == [10, 200, 30]


def test_searches_use_out_of_fold_cases_only():
    """A case is searched on only if every member has a fold that validated on it, and it is
    predicted by exactly those folds; test cases (in no fold's validation list) never are."""
    from delineo.infer.pipeline.build import RunBuildContext
    from delineo.infer.pipeline.members import Fold, Member

    def fold(train, val):
        return Fold({}, {}, {}, "", set(train), list(val))

    # cases a..f; "t" is a held-out test case that no fold trained or validated on
    k_fold = Member("kfold", [fold("cdef", "ab"), fold("abef", "cd"), fold("abcd", "ef")])
    single = Member("single", [fold("abcdef", "")]), Member("f0", [fold("cdef", "ab")])
    ctx = RunBuildContext(Path("."), torch.device("cpu"))
    assert ctx.eligible([k_fold]) == [(c, [[i // 2]]) for i, c in enumerate("abcdef")]
    assert ctx.eligible([k_fold, single[1]]) == [("a", [[0], [0]]), ("b", [[0], [0]])]
    assert ctx.eligible([single[0]]) == []
    assert k_fold.usable_folds("t") == [0, 1, 2] and k_fold.usable_folds("c") == [1]
    ctx.max_cases = 3
    assert [c for c, _ in ctx.eligible([k_fold])] == ["a", "c", "f"]


def test_oversized_entries_are_refused_before_inflating(tmp_path: Path, monkeypatch):
    """A small file whose manifest inflates far beyond the limit (a zip bomb) is refused."""
    import delineo.modelfile.pipeline_file as pf

    bomb = tmp_path / "bomb.delineo"
    with zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("manifest.json", b" " * 5_000_000)
        z.writestr("manifest.sha256", b"0")
    assert bomb.stat().st_size < 20_000
    monkeypatch.setattr(pf, "MAX_MANIFEST_BYTES", 1_000_000)
    with pytest.raises(InputError, match="refused, entry 'manifest.json' claims 5000000 bytes"):
        pf.read_pipeline_file(bomb)
    with pytest.raises(InputError, match="not a Delineo pipeline file"):
        (tmp_path / "x.delineo").write_bytes(b"not a zip")
        pf.read_pipeline_file(tmp_path / "x.delineo")

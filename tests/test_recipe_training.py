"""Recipe training pieces with known answers: the encoder frozen for N epochs then unfrozen
(pneumothorax), Cutout from a chosen epoch (pneumothorax), a run initialised from another run's
weights (liver), the per-slice liver clean-up (liver), mirrored copies as extra training cases
(WMH) and memory-mapped cached cases (WMH, data larger than memory)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from delineo.augment.transforms import Augmenter
from delineo.config import AugmentConfig, PreprocessConfig, config_from_dict
from delineo.data.cache import CachedCase, CaseCache
from delineo.data.sources import load_dataset
from delineo.errors import ConfigError
from delineo.modelfile.checkpoint import save_checkpoint
from delineo.postprocess.search import SearchCase, apply_steps, search_steps
from delineo.registry import MODELS
from delineo.sampling.mirror import with_flip_copies
from delineo.train.freeze import EncoderFreezer
from delineo.train.init_from import init_from
from delineo.train.loop import Trainer

from .conftest import phantom_experiment, write_msd


def _exp(data: Path, **train) -> dict:
    raw = phantom_experiment(data, **train)
    raw["data"]["folds"] = 2  # the phantoms here have 2 to 5 cases
    return raw


def _snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_encoder_frozen_for_n_epochs_then_trained_decoder_trained_throughout(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=4)
    raw = _exp(data, epochs=3, iterations_per_epoch=2, freeze_encoder_epochs=2)
    raw["model"] = {"name": "backbone_unet", "backbone": "resnet18", "decoder_channels": [16, 16, 8, 8, 8]}
    raw["sampling"].update(patch_size=[32, 32], batch_size=4)
    raw["augment"] = {"cutout": {"p": 1.0, "from_epoch": 2}}
    t = Trainer(config_from_dict(raw), tmp_path / "runs", fold=0, progress=False)
    t.setup()
    enc, dec = t.model.backbone, t.model.decoder
    for epoch, encoder_moves in ((0, False), (1, False), (2, True)):
        e0, d0 = _snapshot(enc), _snapshot(dec)
        t.state.epoch = epoch
        t.train_epoch()
        assert _same(e0, _snapshot(enc)) is not encoder_moves, epoch  # weights and BN statistics alike
        assert not _same(d0, _snapshot(dec)), epoch
        assert t.augmenter.epoch == epoch and t.augmenter.cutout_on is (epoch >= 2)
    assert all(p.requires_grad for p in enc.parameters())


def test_ddp_style_freezing_of_a_classifier_drops_encoder_grads_and_trains_the_head():
    torch.manual_seed(0)
    model = MODELS.build({"name": "classifier", "backbone": "resnet18"}, "model", in_channels=1, out_channels=2, dims=2)
    freezer = EncoderFreezer(model, 1, distributed=True)  # under DDP the parameter set may not change
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for epoch, encoder_moves in ((0, False), (1, True)):
        model.train()
        freezer.start_epoch(epoch)
        assert all(p.requires_grad for p in model.parameters())
        enc, head = _snapshot(model.layer1), _snapshot(model.fc)
        loss = torch.nn.functional.cross_entropy(model(torch.randn(4, 1, 32, 32)), torch.tensor([0, 1, 0, 1]))
        opt.zero_grad()
        loss.backward()
        freezer.drop_grads()
        opt.step()
        assert _same(enc, _snapshot(model.layer1)) is not encoder_moves and not _same(head, _snapshot(model.fc))


def test_freezing_a_model_without_encoder_is_one_sentence():
    unet = MODELS.build({"name": "unet", "filters": [4, 8]}, "model", in_channels=1, out_channels=2, dims=2)
    with pytest.raises(ConfigError, match="needs a model with a backbone encoder"):
        EncoderFreezer(unet, 2)


def test_cutout_only_from_its_epoch_and_never_on_the_mask():
    cfg = AugmentConfig.model_validate({"cutout": {"p": 1.0, "size": 0.25, "fill": -5.0, "from_epoch": 3}})
    aug = Augmenter(cfg, dims=2)
    x = torch.ones(3, 2, 16, 16)
    y = torch.randint(0, 3, (3, 1, 16, 16))
    for epoch in (0, 2):
        aug.epoch = epoch
        xo, yo = aug(x, y, torch.Generator().manual_seed(epoch))
        assert torch.equal(xo, x) and torch.equal(yo, y)
    aug.epoch = 3
    xo, yo = aug(x, y, torch.Generator().manual_seed(0))
    assert torch.equal(yo, y) and torch.equal(x, torch.ones_like(x))  # mask and input untouched
    for i in range(3):
        hole = xo[i, 0] == -5.0
        assert torch.equal(hole, xo[i, 1] == -5.0)  # the box covers every channel
        rows, cols = hole.any(1).nonzero().flatten(), hole.any(0).nonzero().flatten()
        # one box of at most 4 x 4 (side 0.25 x 16, clipped at the border), a full rectangle
        assert 0 < len(rows) <= 4 and 0 < len(cols) <= 4 and int(hole.sum()) == len(rows) * len(cols)
        assert torch.all(xo[i][:, ~hole] == 1.0)


def _unet(out: int, filters=(4, 8)) -> torch.nn.Module:
    return MODELS.build({"name": "unet", "filters": list(filters)}, "model", in_channels=1, out_channels=out, dims=2)


def _save(tmp_path: Path, model: torch.nn.Module, out: int) -> Path:
    path = tmp_path / "liver" / "checkpoints" / "best.pt"
    path.parent.mkdir(parents=True)
    save_checkpoint(path, {"config": {}, "meta": {"out_channels": out}, "model_state": model.state_dict()})
    return path


def test_init_from_loads_matching_weights_and_keeps_another_output_layer(tmp_path: Path):
    torch.manual_seed(0)
    liver = _unet(2)
    _save(tmp_path, liver, 2)
    lesion = _unet(3)
    before = _snapshot(lesion)
    kept = init_from(lesion, tmp_path / "liver", 3)  # a run folder: its checkpoints/best.pt
    theirs, now = liver.state_dict(), lesion.state_dict()
    assert kept and all(now[k].shape[0] == 3 and torch.equal(now[k], before[k]) for k in kept)
    loaded = [k for k in now if k not in kept]
    assert len(loaded) > 10 and all(torch.equal(now[k], theirs[k]) for k in loaded)
    with pytest.raises(ConfigError, match="has shape"):
        init_from(_unet(2, (4, 16)), tmp_path / "liver", 2)
    with pytest.raises(ConfigError, match="another architecture"):
        init_from(_unet(2, (4, 8, 16)), tmp_path / "liver", 2)
    with pytest.raises(ConfigError, match="train.init_from"):
        init_from(_unet(2), tmp_path / "nowhere", 2)


def test_init_from_key_starts_a_run_from_another_runs_weights(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=4)
    first = Trainer(config_from_dict(_exp(data)), tmp_path / "a", fold=0, progress=False,
                    cache_root=tmp_path / "cache")
    first.setup()
    with torch.no_grad():
        for p in first.model.parameters():
            p.add_(0.5)
    save_checkpoint(tmp_path / "src.pt", first._checkpoint())
    second = Trainer(config_from_dict(_exp(data, init_from=str(tmp_path / "src.pt"))), tmp_path / "b",
                     fold=0, progress=False, cache_root=tmp_path / "cache")
    second.setup()
    assert _same(_snapshot(first.model), _snapshot(second.model))


def test_per_slice_liver_cleanup_on_a_phantom():
    mask = np.zeros((40, 40, 3), bool)
    mask[5:15, 5:15, 0] = True       # slice 0: the largest (100 px)
    mask[5:15, 17:20, 0] = True      # near (2 px gap) and 30 % of it: kept
    mask[5:6, 17:18, 1] = True       # slice 1's own largest is tiny: kept (each slice keeps one)
    mask[30:38, 30:38, 0] = True     # far (> 20 mm): dropped
    mask[16:17, 5:6, 0] = True       # near but 1 % of the largest: dropped
    mask[30:38, 30:38, 2] = True     # slice 2: one component, kept
    out = apply_steps(mask, [{"name": "per_slice", "mm": 10.0, "fraction": 0.1}], (1.0, 1.0, 2.5))
    expected = np.zeros_like(mask)
    expected[5:15, 5:15, 0] = expected[5:15, 17:20, 0] = True
    expected[5:6, 17:18, 1] = expected[30:38, 30:38, 2] = True
    assert np.array_equal(out, expected)
    # in-plane distances use the in-plane spacing: at 3 mm per pixel the 2-pixel gap is 9 mm
    far = apply_steps(mask, [{"name": "per_slice", "mm": 5.0, "fraction": 0.1}], (3.0, 3.0, 1.0))
    assert not far[5:15, 17:20, 0].any() and far[5:15, 5:15, 0].all()
    with pytest.raises(ConfigError, match="choose 4 or 8"):
        apply_steps(mask, [{"name": "per_slice", "connectivity": 5}], (1.0, 1.0, 1.0))
    # the pipeline's search keeps it when it raises the Dice against the reference (liver pipeline.yaml)
    seg = mask.astype(np.uint8)
    cand = [{"name": "per_slice", "mm": 10.0, "fraction": 0.1, "connectivity": 8, "slice_axis": 2}]
    chosen, table = search_steps([SearchCase(seg, expected.astype(np.uint8), (1.0, 1.0, 2.5))], [1], cand)
    assert chosen == {1: cand} and table[-1]["dice"] == 1.0


def _cached(tmp_path: Path) -> tuple[list[CachedCase], CaseCache]:
    data = write_msd(tmp_path / "data", n=2)
    ds = load_dataset(config_from_dict(_exp(data)).data)
    cache = CaseCache(tmp_path / "cache", PreprocessConfig(crop_foreground=False), ds.labels)
    cache.prepare(ds.cases, progress=False)
    return [cache.load(c) for c in ds.cases], cache


def test_flip_copies_add_exact_mirrors_with_mirrored_foreground(tmp_path: Path):
    cases, _ = _cached(tmp_path)
    out = with_flip_copies(cases, [0])
    assert len(out) == 2 * len(cases) and out[:2] == cases
    for case, copy in zip(cases, out[2:]):
        assert copy.case_id == case.case_id + "#flip0"
        assert np.array_equal(copy.image, np.asarray(case.image)[:, ::-1])
        assert np.array_equal(copy.label, np.asarray(case.label)[::-1])
        assert np.shares_memory(copy.image, case.image)  # a view of the memory-mapped case, not a copy
        for value, coords in copy.fg_coords.items():  # every mirrored coordinate is that label in the copy
            assert len(coords) and np.all(copy.label[tuple(coords.T)] == value)
    assert len(with_flip_copies(cases, [0, 1])) == 3 * len(cases)
    with pytest.raises(ConfigError, match="flip_copies"):
        config_from_dict({**phantom_experiment(tmp_path), "sampling": {"flip_copies": [0, 3]}})


def test_flip_copies_key_doubles_the_training_set(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=5)
    raw = _exp(data)
    raw["sampling"]["flip_copies"] = [1]
    t = Trainer(config_from_dict(raw), tmp_path / "runs", fold=0, progress=False)
    t.setup()
    assert len(t.train_data) == 2 * len(t.train_cases) and len(t.sampler.cases) == len(t.train_data)


def test_cached_cases_are_read_memory_mapped(tmp_path: Path):
    cases, _ = _cached(tmp_path)
    assert all(isinstance(c.image, np.memmap) and isinstance(c.label, np.memmap) for c in cases)
    assert all(c.image.mode == "r" for c in cases)

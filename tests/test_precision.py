"""bfloat16 mixed precision: predictions agree with float32, training keeps float32 weights and
optimiser state while the network really runs in bfloat16, and ``auto`` decides once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from delineo import precision as mixed
from delineo.config import config_from_dict
from delineo.data.cache import CaseCache
from delineo.infer.predictor import Predictor
from delineo.train.loop import Trainer, dice, train

from .conftest import phantom_experiment, write_msd

needs_bf16 = pytest.mark.skipif(not mixed.bf16_native(torch.device("cpu")),
                                reason="this CPU has no native bfloat16 units")


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("bf16")
    data = write_msd(root / "data", n=8)
    cfg = config_from_dict(phantom_experiment(data, epochs=6, iterations_per_epoch=8))
    return train(cfg, root / "runs", fold=0, progress=False), root


def _predict_all(run: Path, precision: str) -> list[np.ndarray]:
    pred = Predictor.from_checkpoint(run / "checkpoints" / "best.pt", device="cpu")
    pred.cfg.infer.precision = precision
    pred.precision = mixed.resolve(precision, pred.device, "infer")
    cache = CaseCache(run.parent / "cache", pred.cfg.preprocess, {1: "one", 2: "two"})
    from delineo.data.sources import load_dataset

    cases = load_dataset(pred.cfg.data).cases
    cache.prepare(cases, progress=False)
    out = []
    for case in cases:
        c = cache.load(case)
        out.append(pred.predict_preprocessed(np.asarray(c.image), c.record)[0])
    return out


@needs_bf16
def test_bf16_labels_agree_with_fp32(trained):
    run, _ = trained
    a, b = _predict_all(run, "fp32"), _predict_all(run, "bf16")
    for x, y in zip(a, b):
        assert (x > 0).sum() > 100  # the model found the phantom: the comparison is not between two empty maps
        for value in (1, 2):
            assert dice(x == value, y == value) >= 0.99


@needs_bf16
def test_bf16_training_keeps_float32_state(tmp_path: Path):
    data = write_msd(tmp_path / "data", n=6)
    cfg = config_from_dict(phantom_experiment(data, epochs=1, iterations_per_epoch=6, precision="bf16"))
    t = Trainer(cfg, tmp_path / "runs", fold=0, progress=False)
    t.setup()
    assert t.precision == "bf16"
    seen: list[torch.dtype] = []
    conv = next(m for m in t.model.modules() if isinstance(m, torch.nn.Conv2d))
    handle = conv.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    row = t.train_epoch()
    handle.remove()
    assert seen and all(d == torch.bfloat16 for d in seen)  # the forward ran in bfloat16
    assert np.isfinite(row["train_loss"]) and row["iterations"] == 6
    assert all(p.dtype == torch.float32 for p in t.model.parameters())
    state = [v for s in t.optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.numel() > 1]
    assert state and all(v.dtype == torch.float32 for v in state)  # Adam moments in float32


def test_auto_probes_once_and_respects_the_check(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DELINEO_CACHE", str(tmp_path))
    calls: list[int] = []

    def probe_disagrees() -> tuple[float, float, float]:  # much faster but wrong: must not be chosen
        calls.append(1)
        return 1.0, 0.1, 0.5

    device = torch.device("cpu")
    first = mixed.resolve("auto", device, "unit-test-disagree", probe_disagrees)
    second = mixed.resolve("auto", device, "unit-test-disagree", probe_disagrees)
    assert first == second == "fp32"
    if mixed.bf16_native(device):
        assert calls == [1]  # cached in this process
        mixed._MEMO.clear()
        assert mixed.resolve("auto", device, "unit-test-disagree", probe_disagrees) == "fp32"
        assert calls == [1]  # and on disk for the next process
        assert mixed.resolve("auto", device, "unit-test-agree", lambda: (1.0, 0.5, 1.0)) == "bf16"
        assert mixed.resolve("auto", device, "unit-test-slow", lambda: (1.0, 1.0, 1.0)) == "fp32"
    with pytest.raises(ValueError):
        mixed.resolve("fp16", device, "x")


@needs_bf16
def test_auto_on_a_real_network_picks_a_precision_and_records_its_probe(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("DELINEO_CACHE", str(tmp_path))
    from delineo.models.unet import UNet

    net = UNet(1, 3, dims=3, filters=(8, 16, 32), norm="batch").eval()
    x = torch.randn(2, 1, 32, 32, 32)
    choice = mixed.resolve("auto", torch.device("cpu"), "unit-test-unet", mixed.inference_probe(net, x))
    import json

    record = next(iter(json.loads((tmp_path / "precision.json").read_text()).values()))
    assert record["precision"] == choice
    assert record["agreement"] > 0.95  # bf16 changes few labels of even an untrained net
    assert (choice == "bf16") == (record["fp32_s"] / record["bf16_s"] >= 1.1 and record["agreement"] >= 0.99)


def test_probe_time_counts_the_work_not_the_other_users():
    """A call that waits (as a probe does while other users hold the cores) costs no CPU: the probe's
    time is the work's; a call that works costs about its work, whatever the thread count."""
    import time as _time

    threads = torch.get_num_threads()
    assert mixed.best_time(lambda: _time.sleep(0.2), repeats=2) < 0.05

    def work() -> None:
        c0 = _time.process_time()
        while _time.process_time() - c0 < 0.1:
            pass

    assert 0.09 <= mixed.best_time(work, repeats=2) < 0.3
    assert torch.get_num_threads() == threads  # the probe's single thread is given back

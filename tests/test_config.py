"""The experiment file is validated on load with errors that name the key and a fix."""

from __future__ import annotations

import json

import pytest
import yaml

from delineo.config import load_config
from delineo.errors import ConfigError


def write(tmp_path, data, name="exp.yaml"):
    path = tmp_path / name
    path.write_text(json.dumps(data) if name.endswith(".json") else yaml.safe_dump(data))
    return path


BASE = {"data": {"source": {"type": "msd", "path": "somewhere"}}}


def test_defaults_and_relative_path(tmp_path):
    cfg = load_config(write(tmp_path, BASE))
    assert cfg.data.folds == 5 and cfg.sampling.mode == "3d" and cfg.model["name"] == "unet"
    assert cfg.data.source.path == str((tmp_path / "somewhere").resolve())


def test_json_accepted(tmp_path):
    assert load_config(write(tmp_path, BASE, "exp.json")).name == "experiment"


def test_unknown_top_level_key_suggests_closest(tmp_path):
    with pytest.raises(ConfigError, match=r"exp\.yaml: unknown key 'trian' at trian \(did you mean 'train'\?\)"):
        load_config(write(tmp_path, {**BASE, "trian": {}}))


def test_unknown_nested_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown key 'epoch' at train\.epoch \(did you mean 'epochs'\?\)"):
        load_config(write(tmp_path, {**BASE, "train": {"epoch": 3}}))


def test_unknown_key_in_list_item(tmp_path):
    with pytest.raises(ConfigError, match=r"preprocess\.intensity\[0\]\.presett"):
        load_config(write(tmp_path, {**BASE, "preprocess": {"intensity": [{"presett": "ct"}]}}))


def test_wrong_type_names_place(tmp_path):
    with pytest.raises(ConfigError, match=r"invalid value at train\.epochs"):
        load_config(write(tmp_path, {**BASE, "train": {"epochs": "many"}}))


def test_impossible_value(tmp_path):
    with pytest.raises(ConfigError, match=r"data\.folds"):
        load_config(write(tmp_path, {"data": {**BASE["data"], "folds": 1}}))
    with pytest.raises(ConfigError, match=r"preprocess\.intensity\.0"):
        load_config(write(tmp_path, {**BASE, "preprocess": {"intensity": [{"preset": "ct", "window": [200, -100]}]}}))


def test_unknown_component_and_parameter(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown model 'unett' at model \(did you mean 'unet'\?\)"):
        load_config(write(tmp_path, {**BASE, "model": {"name": "unett"}}))
    with pytest.raises(ConfigError, match=r"unknown parameter 'filter' .* at model\.filter \(did you mean 'filters'\?\)"):
        load_config(write(tmp_path, {**BASE, "model": {"name": "unet", "filter": [8, 16]}}))


def test_set_overrides(tmp_path):
    cfg = load_config(write(tmp_path, BASE), ["train.epochs=7", "model.filters=[4, 8]", "train.max_minutes=2.5"])
    assert cfg.train.epochs == 7 and cfg.model["filters"] == [4, 8] and cfg.train.max_minutes == 2.5
    with pytest.raises(ConfigError, match="unknown key 'epochz'"):
        load_config(write(tmp_path, BASE), ["train.epochz=7"])


def test_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)


def test_plugin_registration(tmp_path):
    from torch import nn

    from delineo.registry import MODELS

    @MODELS.register("tiny_test_net")
    class Tiny(nn.Module):
        def __init__(self, in_channels: int, out_channels: int, dims: int = 3, width: int = 4):
            super().__init__()
            self.conv = nn.Conv3d(in_channels, out_channels, 1)

    cfg = load_config(write(tmp_path, {**BASE, "model": {"name": "tiny_test_net", "width": 2}}))
    net = MODELS.build(cfg.model, "model", in_channels=1, out_channels=3, dims=3)
    assert net.conv.out_channels == 3

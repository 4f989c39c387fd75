"""Where an experiment's data is found: ``package:`` paths name data inside the installed
package, and a shipped example whose checkout-relative data path does not exist (after
``pip install``) falls back to the embedded sample of the same name, said on an INFO line, while
a user's own file or a path given with --set is never replaced. The installed case itself runs
in tests/test_wheel.py (an example trains from the installed package)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from delineo.config import PACKAGE_DIR, load_config, shipped_experiment
from delineo.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_package_scheme_names_the_sample_inside_the_package(tmp_path: Path):
    exp = tmp_path / "exp.yaml"
    exp.write_text((ROOT / "examples" / "wmh.yaml").read_text())
    cfg = load_config(exp, ["data.source.path=package:sample_data/hippocampus"])
    assert Path(cfg.data.source.path) == (PACKAGE_DIR / "sample_data" / "hippocampus").resolve()
    assert (Path(cfg.data.source.path) / "dataset.json").is_file()
    with pytest.raises(ConfigError, match="stays inside the package"):
        load_config(exp, ["data.source.path=package:../../etc"])


def test_shipped_examples_are_recognised_and_a_users_copy_is_not(tmp_path: Path):
    assert shipped_experiment(PACKAGE_DIR / "examples" / "hippocampus.yaml")
    assert shipped_experiment(ROOT / "examples" / "hippocampus.yaml")  # the folder the package links to
    copy = tmp_path / "hippocampus.yaml"
    copy.write_text((ROOT / "examples" / "hippocampus.yaml").read_text())
    assert not shipped_experiment(copy)
    cfg = load_config(copy)  # a user's file with a wrong relative path keeps it (and fails loudly later)
    assert Path(cfg.data.source.path) == (tmp_path / "../../shared/data/hippocampus").resolve()


def test_every_shipped_example_finds_data_without_set(caplog):
    """Each example's data exists, or the fallback names an embedded sample on an INFO line."""
    for path in sorted((PACKAGE_DIR / "examples").glob("*.yaml")):
        if "pipeline" in path.stem:  # pipeline files name trained runs, not data
            continue
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="delineo.config"):
            cfg = load_config(path)
        assert Path(cfg.data.source.path).exists(), (path.name, cfg.data.source.path)
        if Path(cfg.data.source.path).is_relative_to((PACKAGE_DIR / "sample_data").resolve()) and \
                "../../shared" in path.read_text():
            assert "using the sample data shipped with Delineo" in caplog.text

"""The documentation site: it builds in strict mode (a broken link or a missing reference
fails), the generated references cover every experiment key and every CLI option, each extra
and recipe is documented, and the getting-started page's code blocks run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from delineo.config import ExperimentConfig
from delineo.docs_reference import DESCRIPTIONS, cli_reference, description, experiment_reference, schema_rows, \
    verb_parsers
from delineo.recipes import list_recipes

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
BIN = Path(sys.executable).parent


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of every fenced block of a Markdown page, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)[^\n]*\n(.*?)^```", text, re.M | re.S)]


def test_site_builds_in_strict_mode(tmp_path: Path):
    pytest.importorskip("mkdocs")
    pytest.importorskip("mkdocstrings")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    site = tmp_path / "site"
    for page in ["reference/experiment", "reference/cli", "metrics", "dicom", "design", "api/io",
                 *[f"recipes/{n}" for n in list_recipes()]]:
        assert (site / page / "index.html").is_file(), page
    html = (site / "api" / "io" / "index.html").read_text()
    assert "read_dicom_image" in html and "MONOCHROME1" in html  # docstrings rendered by mkdocstrings


def test_experiment_reference_has_every_key_with_type_default_and_description():
    text = experiment_reference()
    rows = list(schema_rows(ExperimentConfig))
    assert len(rows) > 100
    for path, type_name, default, schema_text, sub in rows:
        line = next((ln for ln in text.splitlines() if ln.startswith(f"| `{path}` |")), None)
        assert line is not None, path
        assert description(path, schema_text, sub), f"{path} has no description"
        assert line.count("|") - line.count("\\|") == 5 and default.replace("|", "\\|") in line
    paths = {r[0] for r in rows}
    assert not set(DESCRIPTIONS) - paths, "descriptions of keys the schema no longer has"
    assert "| `sampling.mode` | '3d' \\| '2d' \\| '2.5d' | `\"3d\"` |" in text


def test_cli_reference_has_every_verb_and_option():
    text = cli_reference()
    for verb, parser in verb_parsers().items():
        assert f"\n## {verb}\n" in text, verb
        for action in parser._actions:
            for option in action.option_strings:
                if option not in ("-h", "--help", "--debug", "-q", "--quiet"):
                    assert f"`{option}`" in text.split(f"\n## {verb}\n")[1].split("\n## ")[0], (verb, option)
    assert "| `--fold` `FOLD` | fold number, 'all' for every fold" in text


def test_every_extra_and_recipe_is_in_the_docs():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    install = (DOCS / "installation.md").read_text()
    for extra in extras:
        assert f"| `{extra}` |" in install, f"extra '{extra}' is not in docs/installation.md"
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text().replace("!!python", ""))["nav"]
    flat = str(nav)
    for name in list_recipes():
        assert f"recipes/{name}.md" in flat and f"[{name}]({name}.md)" in (DOCS / "recipes" / "index.md").read_text()


def test_getting_started_code_blocks_run(tmp_path: Path):
    """Every bash and python block, in order, in one fresh folder; console blocks name real make targets."""
    blocks = fenced_blocks((DOCS / "getting-started.md").read_text())
    assert [lang for lang, _ in blocks].count("bash") >= 2 and any(lang == "python" for lang, _ in blocks)
    makefile = (ROOT / "Makefile").read_text()
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1"}
    for lang, code in blocks:
        if lang == "console":
            for target in re.findall(r"^\$ make (\w+)", code, re.M):
                assert re.search(rf"^{target}:", makefile, re.M), target
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", code] if lang == "bash" else [sys.executable, "-c", code]
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"{lang} block failed:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    assert (tmp_path / "quick_demo" / "mask.nii.gz").is_file()
    assert (tmp_path / "quick_runs" / "brain_tumour" / "fold_0" / "checkpoints" / "best.pt").is_file()

"""The installable package: a wheel built from the repository (not editable) holds the code,
the example experiments, the recipes and the sample data, and once installed into a fresh venv
``delineo`` works from an unrelated folder: --help, the recipes, and the demo experiment's first
training steps on the sample data inside the installed package, and a shipped example trained
from the installed package without pointing it at data.

Cheap by design: the wheel is installed with --no-deps into a venv without pip, and that venv
reaches the project venv's dependencies (torch, ...) through a .pth path line. A path added so
is not a site directory, so the project's editable-install hook is not run and the import of
``delineo`` must come from the wheel (checked)."""

from __future__ import annotations

import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def clean_env(**extra: str) -> dict[str, str]:
    """The environment of the fresh venv's commands: no PYTHONPATH (a checkout on it would be
    imported instead of the installed wheel), one thread."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return {**env, "OMP_NUM_THREADS": "1", **extra}


def _run(cmd: list[str], cwd: Path, timeout: int = 300, **env: str) -> str:
    done = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=clean_env(**env))
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", str(out), str(ROOT)], cwd=out, timeout=600)
    wheels = list(out.glob("delineo-*.whl"))
    assert len(wheels) == 1
    return wheels[0]


def test_wheel_holds_examples_recipes_and_sample_data(wheel: Path):
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ["delineo/cli.py", "delineo/sample_data/demo.yaml",
                   "delineo/sample_data/hippocampus/dataset.json",
                   "delineo/sample_data/headneck_standin/folds.h5",
                   "delineo/sample_data/ct_liver/LICENSE.txt",
                   *[f"delineo/recipes/{n}/README.md" for n in
                     ["brain_tumour", "headneck_petct", "liver", "pneumothorax", "wmh"]],
                   "delineo/recipes/liver/lesion.yaml"]:
        assert needed in names, needed
    assert len([n for n in names if n.startswith("delineo/sample_data/hippocampus/imagesTr/")]) == 48
    examples = sorted(n for n in names if n.startswith("delineo/examples/") and n.endswith(".yaml"))
    if (ROOT / "delineo" / "examples").is_dir():  # examples inside the package (the packaging fix)
        assert len(examples) == len(list((ROOT / "delineo" / "examples").glob("*.yaml")))
    assert not any(n.startswith(("tests/", "docs/", "benchmarks/")) for n in names)


def test_installed_wheel_runs_from_any_folder(wheel: Path, tmp_path: Path):
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp_path)
    py = venv / "bin" / "python"
    fresh_site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                           cwd=tmp_path).strip())
    (fresh_site / "project_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", "-q", str(wheel)],
         cwd=tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    located = _run([str(py), "-c", "import delineo, delineo.demo as d; print(delineo.__file__); print(d.SAMPLE_DIR)"],
                   cwd=work).split()
    assert all(Path(p).is_relative_to(fresh_site) for p in located), located
    delineo = str(venv / "bin" / "delineo")
    assert "recipe" in _run([delineo, "--help"], cwd=work)
    assert "brain_tumour" in _run([delineo, "recipe", "list"], cwd=work)
    # `delineo demo` itself (train, evaluate, predict), shrunk to its first steps, on the sample
    # data inside the installed package
    printed = _run([delineo, "-q", "demo", "--out", "demo_here", "--set", "train.epochs=1",
                    "--set", "train.iterations_per_epoch=1", "--set", "model.filters=[4,8]",
                    "--set", "sampling.batch_size=1", "--set", "train.max_minutes=null",
                    "--set", "data.max_cases=12"], cwd=work)
    assert "Delineo demo finished" in printed and "held-out mean Dice" in printed, printed
    run = work / "demo_here" / "runs" / "demo-hippocampus" / "fold_0"
    assert (run / "checkpoints" / "best.pt").is_file() and (run / "report.html").is_file()
    assert len(list((work / "demo_here" / "prediction").glob("*.nii.gz"))) == 1
    _run([delineo, "recipe", "copy", "wmh", "my_wmh"], cwd=work)
    assert str(fresh_site) in (work / "my_wmh" / "experiment.yaml").read_text()
    # a shipped example trains as installed, without --set data.source.path: its data path is
    # relative to a source checkout (../../shared/data/hippocampus), absent here, so it falls back
    # to the embedded sample of that name and says so on an INFO line
    example = fresh_site / "delineo" / "examples" / "hippocampus.yaml"
    done = subprocess.run([delineo, "train", str(example), "--runs", "ex_runs", "--db", "off",
                           "--set", "train.epochs=1", "--set", "train.iterations_per_epoch=1",
                           "--set", "model.filters=[4,8]", "--set", "sampling.batch_size=1",
                           "--set", "sampling.patch_size=[16,16,16]", "--set", "train.max_minutes=null",
                           "--set", "data.max_cases=5"], cwd=work, capture_output=True, text=True, timeout=300,
                          env=clean_env())
    assert done.returncode == 0, done.stderr[-3000:]
    assert "using the sample data shipped with Delineo" in done.stderr, done.stderr[-3000:]
    assert (work / "ex_runs" / "hippocampus" / "fold_0" / "checkpoints" / "best.pt").is_file()


def test_extras_and_the_gpu_line_are_documented():
    """The extras the README promises exist in pyproject, and the README names them and the one
    line a GPU user runs (the CUDA build of PyTorch first: the default stays the CPU build)."""
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    assert {"dicom", "viewer", "db", "docs", "test"} <= set(extras)
    assert any(d.startswith("pytest-cov") for d in extras["test"])  # `make test` measures coverage
    assert any(d.startswith("python-gdcm") for d in extras["dicom"])
    readme = (ROOT / "README.md").read_text()
    for name in ("dicom", "viewer", "db", "docs", "test"):
        assert f"[{name}]" in readme, name
    flat = " ".join(readme.split())
    assert "pip install torch --index-url https://download.pytorch.org/whl/cu" in flat
    assert not any(d.startswith("torch") and "cu" in d for d in project["dependencies"])

# Two commands a newcomer needs: `make demo` and `make test`. Each creates .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: demo test soak install clean bench coverage docs

$(BIN)/delineo: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# The CPU build of PyTorch first, so that the project's `torch>=` range installs nothing bigger.
	$(BIN)/pip install --quiet torch==2.13.0 || $(BIN)/pip install --quiet torch
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(BIN)/delineo

install: $(BIN)/delineo

demo: install
	$(BIN)/delineo demo

# The floor of the line coverage (the README's figure, measured by this very command); the
# suite fails under it.
COV_FLOOR := 85
COV := --cov=delineo --cov-report=term:skip-covered --cov-fail-under=$(COV_FLOOR)

test: install
	$(BIN)/python -m pytest -q -x --durations=15 $(COV)

# Long fault-injection, fuzz and load runs: not part of `make test`.
soak: install
	$(BIN)/python -m pytest -q -m soak --durations=15

# The same measurement as `make test`, without stopping at the first failure, plus coverage.json.
coverage: install
	$(BIN)/python -m pytest -q $(COV) --cov-report=json:coverage.json

# The documentation site, strict: a broken link or a missing reference fails the build.
docs: install
	$(BIN)/mkdocs build --strict

bench: install
	$(BIN)/python benchmarks/hippocampus.py

clean:
	rm -rf $(VENV) runs .pytest_cache

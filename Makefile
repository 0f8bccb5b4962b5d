# The README's commands. Each creates .venv/ from scratch when it is missing or stale.
VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export ZENML_ANALYTICS_OPT_IN := false

.PHONY: run test test-slow lint bench mutation clean

$(STAMP): pyproject.toml
	rm -rf $(VENV)
	python3 -m venv $(VENV)
	$(PYTHON) -m pip install --quiet --upgrade pip
	$(PYTHON) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

## Train on the bundled data with the local default ZenML stack and export the model.
run: $(STAMP)
	$(VENV)/bin/tailseg run --config zenml.yaml

## The default test suite (what .ci/run runs).
test: $(STAMP)
	$(PYTHON) -m pytest

## Only the tests marked slow.
test-slow: $(STAMP)
	$(PYTHON) -m pytest -m slow

lint: $(STAMP)
	$(VENV)/bin/ruff check tailseg steps pipelines tests benchmarks mutation

## All benchmarks; results as JSON in benchmarks/results/.
bench: $(STAMP)
	for script in benchmarks/bench_*.py; do $(PYTHON) $$script || exit 1; done

## Mutation testing of the decision code with mutmut (config: [tool.mutmut] in pyproject.toml),
## its score, then the six release-rule mutations of mutation/release_rules.py. Not part of
## `make test`; about 22 minutes on 2 cores (1224 s + 50 s measured, README).
mutation: $(STAMP)
	rm -rf mutants
	$(VENV)/bin/mutmut run
	$(VENV)/bin/mutmut export-cicd-stats
	$(PYTHON) mutation/score.py
	$(PYTHON) mutation/release_rules.py

clean:
	rm -rf $(VENV) exports runs logs .pytest_cache mutants

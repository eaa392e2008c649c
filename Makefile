# The two commands of the README. Both create .venv/ (once) from pyproject.toml + requirements.lock.
PYTHON ?= python3
VENV := .venv

$(VENV)/.installed: pyproject.toml requirements.lock
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c requirements.lock -e '.[dev]'
	touch $@

.PHONY: setup demo test lint bench
setup: $(VENV)/.installed

demo: setup  ## the main job on the embedded corpus: FSDP on 2 processes, stop by signal, resume, eval, plot
	$(VENV)/bin/python -m blt_scale.train.demo runs/demo

test: setup  ## the whole test suite
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

lint: setup  ## ruff: lint and formatting (line length 110)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: setup  ## performance figures (prints ratios; not part of the tests)
	for script in benchmarks/*.py; do $(VENV)/bin/python $$script || exit 1; done

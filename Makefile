# The two commands of the README: `make demo` (set up + the main job) and `make test` (set up + tests).
# Both create or refresh .venv whenever pyproject.toml changes; nothing is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
RUNS   ?= runs

.PHONY: venv demo test test-slow test-all lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

demo: venv
	$(VENV)/bin/xception summary xception --plot $(RUNS)/demo/cost.png

test: venv
	$(PY) -m pytest -q

test-slow: venv
	$(PY) -m pytest -q -m slow

test-all: venv
	$(PY) -m pytest -q -m ""

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache .ruff_cache

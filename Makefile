# The two commands of the README: `make demo` (set up + the main job) and `make test` (set up + tests).
# Both create or refresh .venv whenever pyproject.toml changes; nothing is installed by hand.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
EDGE_STAMP := $(VENV)/.edge-stamp
RUNS   ?= runs

.PHONY: venv edge demo fashion-mnist browser test test-slow test-all lint clean

$(STAMP): pyproject.toml setup.py $(wildcard src/xception/fast/csrc/*)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	@# pip --quiet hides a failed build of the optional C++ kernels: say it here, with the fix.
	@$(PY) -c "from xception.fast import native; p = native.problem(); p and p[1] and print('warning:', p[0])"
	touch $(STAMP)

venv: $(STAMP)

# The ExecuTorch and LiteRT toolchains (the `edge` extra) for the tests of those exports: about 1.4 GB and two
# minutes to install, so the demo goes without them.
$(EDGE_STAMP): $(STAMP)
	$(PY) -m pip install --quiet -e ".[edge]"
	touch $(EDGE_STAMP)

edge: $(EDGE_STAMP)

# The demo: train the small-input Xception on Fashion-MNIST on the CPU, evaluate it on the test set, classify
# a few test images. DEMO_ARGS cut the fashion-mnist recipe to fit 10 minutes on 2 cores: 10 epochs of a
# model a quarter as wide, without shifts or flips (a model this small and this short a run fit more of the
# images as they are: +0.23 points on average over three runs each), in batches of 256 (6–19 % more images a
# second than 128 for this small model; docs/accuracy.md has the runs and their times). OMP_WAIT_POLICY=PASSIVE keeps
# PyTorch's two threads from spinning when other work shares the cores (10× slower otherwise on a busy machine).
DEMO      ?= $(RUNS)/demo
DEMO_ARGS ?= --epochs 10 --set model.width=0.125 --set translate=0 --set hflip=0 --set batch_size=256

demo: venv fashion-mnist
	@rm -rf $(DEMO)
	@set -e; start=$$(date +%s); \
	export OMP_WAIT_POLICY=PASSIVE; \
	$(PY) -m xception train --out $(DEMO) $(DEMO_ARGS); \
	$(PY) -m xception evaluate --weights $(DEMO)/model.safetensors --data fashion-mnist --no-progress \
	  --plot $(DEMO)/confusion_matrix.png > $(DEMO)/test.txt; \
	cat $(DEMO)/test.txt; \
	$(PY) -c "from xception.data import save_samples; save_samples('$(DEMO)/samples', 8)"; \
	$(PY) -m xception predict --weights $(DEMO)/model.safetensors $(DEMO)/samples --top-k 3; \
	took=$$(( $$(date +%s) - start )); \
	echo "train + evaluate + predict took $$((took / 60)) min $$((took % 60)) s; plots and model in $(DEMO)"; \
	tail -n 1 $(DEMO)/test.txt

# Fashion-MNIST's IDX files: Debian's package when it can be installed, else the download at training time.
fashion-mnist: venv
	@if $(PY) -c "from xception.data.fashion_mnist import find_fashion_mnist as f; raise SystemExit(f() is None)"; \
	then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Fashion-MNIST: apt-get install dataset-fashion-mnist"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "apt-get could not install it: training will download Fashion-MNIST from its upstream mirror"; \
	else \
	  echo "Fashion-MNIST is not installed (as root: apt-get install dataset-fashion-mnist);" \
	       "training will download it from its upstream mirror"; \
	fi

# The page test drives Debian's chromium through Playwright (never a browser download): installed here when
# root with apt (as in CI, where that test must run); elsewhere the test is skipped and says why.
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing the page test's browser: apt-get install chromium"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "apt-get could not install chromium: the page test will be skipped"; \
	else \
	  echo "chromium is not installed (as root: apt-get install chromium): the page test will be skipped"; \
	fi

# The suite runs on every core (pytest-xdist): one test file per worker at a time, so a file's shared fixtures
# are built once. TEST_WORKERS=0 runs it in this process.
TEST_WORKERS ?= auto
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile

test: venv edge browser
	$(PYTEST)

test-slow: venv edge fashion-mnist
	$(PYTEST) -m slow

test-all: venv edge browser fashion-mnist
	$(PYTEST) -m ""

lint: venv
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) $(RUNS) .pytest_cache .ruff_cache

# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
HS := $(VENV)/bin/headstart
FASHION := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install demo test bench lesson data chromium clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e ".[test]"
	touch $@

install: $(VENV)/.installed

# The embedded default data: Fashion-MNIST from Debian's package (installed here when we are root).
data:
	@if [ ! -f $(FASHION) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist || (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist)) >/dev/null; \
	  else echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist' (or let headstart download it)"; fi; \
	fi

# The lesson's experiment in miniature: scratch vs linear vs partial on 3 Fashion-MNIST classes that look alike
# (t-shirt, pullover, shirt), 500 training images each, one seed. Val (the best epoch) is 300/class of the training
# images the subsample left unused; the reported figures are on the official t10k test images (1,000/class), which
# nothing was selected on, with 95% intervals and a verdict. Measured 2026-11-30 on 2 CPU cores (load ~3 from other
# jobs): 115 s wall, training 28 s scratch, 10 s linear, 58 s partial; test accuracy partial .808 (.794-.822), linear
# .790 (.776-.805), scratch .616 (.597-.634); "partial wins" (partial - linear +1.8 points, 95% interval 0.8 to 2.8).
# Re-running it reuses the finished runs.
demo: install data
	$(HS) compare fashion-mnist --classes t-shirt,pullover,shirt --per-class 500 --strategies scratch,linear,partial \
	  --seeds 0 --epochs 4 --image-size 48 --views 4 --val-per-class 300 --out runs/demo
	@echo "report: $(CURDIR)/runs/demo/report.html"

# Headless Chromium for the report's browser test (Debian's package, installed here when we are root).
chromium:
	@if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium || (apt-get update -qq && apt-get install -y -qq chromium)) >/dev/null; \
	  else echo "chromium is missing: run 'sudo apt-get install chromium' (the browser test is skipped without it)"; fi; \
	fi

test: install chromium
	$(VENV)/bin/lint-imports --no-cache
	$(PY) -m pytest -q --durations=20

# headstart against the tutorial's loop on this machine (hours on 2 cores: the reference is slow by design):
# bench/results/*.json, then the table (see docs/performance.md).
bench: install
	PYTHONPATH=src:bench $(PY) bench/run.py
	PYTHONPATH=src:bench $(PY) bench/table.py > bench/results/table.md
	@echo "results: bench/results/*.json, table: bench/results/table.md (see docs/performance.md)"

# The lesson notebooks (notebooks/NN_*.py, jupytext), executed end to end with FAST settings and saved as the
# committed notebooks/NN_*.ipynb (outputs scrubbed of machine paths); LESSON_SETTING=TINY|FULL changes the scale.
lesson: install
	$(PY) -m pip install -q --disable-pip-version-check -e ".[lesson]"
	$(PY) notebooks/execute.py --setting $${LESSON_SETTING:-FAST}

clean:
	rm -rf runs .pytest_cache

# Two commands do all set-up: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
# Threads per process: the CI machine has 2 cores.
export OMP_NUM_THREADS ?= 2
# Nothing in tests or the demo may reach a model hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
# Keep library caches inside the repository (nothing outside it is written but the pip cache).
export MPLCONFIGDIR := $(CURDIR)/.venv/.cache/matplotlib
export HF_HOME := $(CURDIR)/.venv/.cache/huggingface
export TORCH_HOME := $(CURDIR)/.venv/.cache/torch

.PHONY: demo test bench fuzz lint clean help browser-deps

help:
	@echo "make demo   - create .venv, install, run the end-to-end demo (writes demo-output/index.html)"
	@echo "make test   - create .venv, install the test extra, run the whole test suite"
	@echo "make bench  - run the benchmarks under bench/ (prints tables, writes bench/out/*.json)"
	@echo "make fuzz   - long fuzz run of DICOM preprocessing, reports and manifests (FUZZ_SECONDS=600 or FUZZ_CASES=N)"
	@echo "make lint   - ruff + mypy on the typed core"

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel

$(VENV)/.installed-all: pyproject.toml | $(PY)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e ".[all]"
	@touch $@

$(VENV)/.installed-test: pyproject.toml | $(PY)
	$(PIP) install torch==2.14.1 torchvision==0.29.1
	$(PIP) install -e ".[test]"
	@touch $@ $(VENV)/.installed-all

demo: $(VENV)/.installed-all
	$(VENV)/bin/mammoclip demo --out demo-output

# The report test opens the demo's HTML in a real browser: Debian's Chromium and its driver. When PATH has
# none, they are unpacked under .venv/browser (apt state redirected there, nothing installed system-wide);
# only if that fails does the script fall back to `apt-get install`, saying so.
browser-deps:
	@bash scripts/install_browser.sh

test: $(VENV)/.installed-test browser-deps
	$(PY) -m pytest -q --durations=25

bench: $(VENV)/.installed-test
	@for f in $(filter-out bench/fuzz.py bench/factor_sweep.py,$(wildcard bench/*.py)); do echo "== $$f"; $(PY) $$f || exit 1; done

# The long fuzz run (the short one is part of `make test`): bounded by FUZZ_SECONDS (default 600)
# or FUZZ_CASES; prints a table and writes bench/out/fuzz.json.
FUZZ_SECONDS ?= 600
FUZZ_CASES ?= 0
fuzz: $(VENV)/.installed-test
	FUZZ_SECONDS=$(FUZZ_SECONDS) FUZZ_CASES=$(FUZZ_CASES) $(PY) bench/fuzz.py

lint: $(VENV)/.installed-test
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/mypy

clean:
	rm -rf demo-output bench/out .pytest_cache

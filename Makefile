# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-output

.PHONY: demo demo-local test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's dependencies change. The demo needs no torch; the tests of the
# local arms (clip/, cnn/) do: `make test` adds the `local` extra (torch, open_clip, timm...).
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

$(VENV)/.installed-local: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e '.[dev,local]'
	touch $@

# The whole study offline, from one experiment file: a generated sample -> prepare -> the
# built-in emulator -> fine-tune -> zero-shot (Batch API) -> the fine-tuned model -> latency ->
# report. Output in $(DEMO)/; a second `make demo` finds every step done.
demo: $(VENV)/.installed
	$(BIN)/vlm-classify run examples/demo.toml --out $(DEMO)

# The same, plus a CNN trained here on the generated sample: one arm of the report is a real,
# measured model next to the emulated ones (installs the `local` extra: torch, timm...).
demo-local: $(VENV)/.installed-local
	$(BIN)/vlm-classify run examples/demo-local.toml --out $(DEMO)-local

test: $(VENV)/.installed-local
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy src
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-local
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

format: $(VENV)/.installed
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

# The figures in docs/benchmarks.md (several minutes; the throughput run alone takes ~70 s).
bench: $(VENV)/.installed-local
	$(BIN)/python benchmarks/bench_prepare.py
	$(BIN)/python benchmarks/bench_classify_throughput.py
	$(BIN)/python benchmarks/bench_classify_overhead.py
	$(BIN)/python benchmarks/bench_classify_faults.py
	$(BIN)/python benchmarks/bench_classify_kill.py
	$(BIN)/python benchmarks/bench_classify_secrets.py
	$(BIN)/python benchmarks/bench_hf.py
	$(BIN)/python benchmarks/bench_until_decided.py
	$(BIN)/python benchmarks/bench_run_memory.py --quick
	$(BIN)/python benchmarks/bench_paired_coverage.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache .mypy_cache

# `make demo` and `make test` each create .venv when missing and install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo-output

.PHONY: demo test lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Reinstall when the project's dependencies change.
$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

demo: $(VENV)/.installed
	@echo "== 1/4 generate a Stanford-Dogs-shaped sample (offline stand-in for the real dataset)"
	$(BIN)/vlm-classify sample $(DEMO)/source --classes 12 --per-class 14
	@echo "== 2/4 prepare: validate, normalise, deduplicate, sample 10/2/2 per class"
	$(BIN)/vlm-classify prepare $(DEMO)/source --out $(DEMO)/prepared --split 10,2,2
	@echo "== 3/4 export: fine-tuning JSONL (train, val) and Batch API input (test)"
	$(BIN)/vlm-classify export $(DEMO)/prepared --model openai/gpt-4o-2024-08-06
	@echo "== 4/4 estimate: what the experiment will cost before a cent is spent"
	$(BIN)/vlm-classify estimate $(DEMO)/prepared --model azure/gpt-4o-2024-08-06
	@echo
	@echo "Demo output is in $(DEMO)/prepared (manifest.csv, prepare-report.json, jsonl/)"

test: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

format: $(VENV)/.installed
	$(BIN)/ruff format src tests benchmarks
	$(BIN)/ruff check --fix src tests benchmarks

bench: $(VENV)/.installed
	$(BIN)/python benchmarks/bench_prepare.py

clean:
	rm -rf $(DEMO) .pytest_cache .ruff_cache .mypy_cache

# cellstack: `make demo` runs the whole job on synthetic data, `make test` the tests.
# Both create .venv when it is missing. torch/torchvision are pinned here (pip finds
# these wheels locally on our machines); pyproject.toml itself accepts torch>=2.4.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install $(PINS) -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/cellstack demo --out demo_out

test: $(STAMP)
	$(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python benchmarks/speed.py metric

clean:
	rm -rf demo_out .pytest_cache .ruff_cache

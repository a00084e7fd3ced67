# Two commands for a newcomer: `make demo` and `make test`. Both build .venv idempotently.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test setup system lint bench-bus clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# The CPU build of torch first, so that no dependency pulls a multi-GB CUDA build.
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	touch $@

setup: $(STAMP)

system:
	bash scripts/system-deps.sh

demo: $(STAMP)
	$(BIN)/flowact demo

test: $(STAMP) system
	FLOWACT_REQUIRE_REDIS=1 $(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check $$(git ls-files "*.py")

bench-bus: $(STAMP) system
	$(BIN)/flowact bench bus

clean:
	rm -rf $(VENV) build *.egg-info

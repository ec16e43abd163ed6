# Two commands on a fresh clone (both install what they need into .venv):
#   make simulate   run the default simulated federation (six synthetic agencies, eps=3)
#   make test       ruff, mypy and the whole test suite, slow end-to-end tests included
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install simulate test test-fast lint browser nginx clean

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
	$(BIN)/mypy cli federation clients server simulation tests
	$(BIN)/lint-imports

# The report test opens the HTML report in a real headless Chromium (Debian's package).
browser:
	command -v chromium >/dev/null 2>&1 || (apt-get update && apt-get install -y --no-install-recommends chromium) \
	  || (echo "make test needs Debian's chromium for the report test; as root: apt-get install chromium" >&2; exit 1)

# The agency-facing gateway (`heroes consortium serve`, tests/test_gateway.py and the
# deployment tests) is Debian's nginx with its stream module. Debian packages install with
# apt-get, as root. On a host run by systemd the package also starts Debian's own nginx
# service (port 80); heroes runs its own instance, so `systemctl disable --now nginx` if you
# do not use that one.
nginx:
	{ command -v nginx >/dev/null 2>&1 || test -x /usr/sbin/nginx; } \
	  && test -f /usr/lib/nginx/modules/ngx_stream_module.so \
	  || (apt-get update && apt-get install -y --no-install-recommends nginx libnginx-mod-stream) \
	  || (echo "make test needs Debian's nginx and its stream module for the gateway tests; as root: apt-get install nginx libnginx-mod-stream" >&2; exit 1)

test: lint browser nginx
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/python -m pytest -q -ra

test-fast: $(STAMP)
	FLWR_TELEMETRY_ENABLED=0 $(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache .mypy_cache .ruff_cache .import_linter_cache

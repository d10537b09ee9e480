# Every target creates .venv itself when it is missing, so a fresh clone needs only `make run` or `make test`.
PY      := python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
CONFIG  ?= config.toml

.PHONY: run test lint fmt bench clean system-deps

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev,postgres]'
	touch $(STAMP)

# Debian packages the test suite needs: Chromium for the browser journeys, PostgreSQL for the
# multi-host tests. Installed only when missing (CI machines start without them).
system-deps:
	@bash tests/install_system_deps.sh

# The demo: the example legacy app on :9000 behind the gateway on http://localhost:8080.
run: $(STAMP)
	@$(BIN)/python -m upstream_example --port 9000 & up=$$!; \
	trap 'kill $$up 2>/dev/null' EXIT INT TERM; \
	$(BIN)/python -m gateway serve --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check gateway upstream_example tests bench
	$(BIN)/ruff format --check gateway upstream_example tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format gateway upstream_example tests bench
	$(BIN)/ruff check --fix gateway upstream_example tests bench

test: $(STAMP) system-deps lint
	$(BIN)/python -m pytest -p no:cacheprovider $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

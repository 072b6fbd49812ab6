# fluxbench: `make run` installs and runs the main job on the embedded default; `make test` installs and tests.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
MAIN_JOB ?= protocol=two_phase method=mos protocol.n_jobs=2

.PHONY: install run test lint browser postgres perf

$(BIN)/fluxbench: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[test,cluster]'
	touch $@

install: $(BIN)/fluxbench

run: install
	$(BIN)/fluxbench run $(MAIN_JOB)

# Headless Chromium (Debian's package) for the report's browser test; needs root, skipped otherwise.
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "chromium not installed (needs root): the report's browser test will be skipped"

# Debian's PostgreSQL server binaries for the shared-store tests (they start a throw-away cluster as nobody);
# needs root, skipped otherwise. Only the binaries: the tests never use the system's own cluster.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; } || \
	  echo "postgresql not installed (needs root): the shared-store tests will be skipped"

lint: install
	$(BIN)/ruff check .

test: install browser postgres lint
	$(BIN)/pytest -q -p no:cacheprovider --durations=15

perf: install
	$(BIN)/python perf/overhead.py

# Etch: `make run` starts the log (SQLite, keys created on first start) with local witnesses;
# `make test` runs lint, type checks and the whole test suite. Both create .venv themselves.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
DATA ?= .etch

.PHONY: run test lint typecheck unit bench clean venv browser fuzz

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

# The explorer's browser tests: Playwright (the `browser` extra) drives Debian's chromium, which
# is installed here when missing (as root, or with password-less sudo); otherwise this fails
# and says what to install.
CHROMIUM := /usr/bin/chromium
BROWSER_STAMP := $(VENV)/.browser-stamp

browser: $(BROWSER_STAMP)
	@test -x $(CHROMIUM) || { \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "make browser: $(CHROMIUM) is missing; install Debian's chromium package" \
	    "(apt-get install chromium) as root, or run 'make unit' to skip the browser tests" >&2; \
	    exit 1; fi; \
	  echo "make browser: installing Debian's chromium"; \
	  $$SUDO apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }
	@test -x $(CHROMIUM) || { echo "make browser: chromium is still missing at $(CHROMIUM)" >&2; exit 1; }

$(BROWSER_STAMP): $(STAMP)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,browser]'
	touch $(BROWSER_STAMP)

# Fuzzing (not part of `make test`): every atheris target for FUZZ_SECONDS each, the hypothesis
# fuzz targets at FUZZ_EXAMPLES examples, then schemathesis against a live log and a live witness
# (FUZZ_API_SECONDS each). Exits non-zero on any crash or 5xx; crash inputs go to /tmp/etch-fuzz.
FUZZ_STAMP := $(VENV)/.fuzz-stamp
FUZZ_SECONDS ?= 20
FUZZ_EXAMPLES ?= 1000
FUZZ_API_SECONDS ?= 240

$(FUZZ_STAMP): $(STAMP) pyproject.toml
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test,fuzz]'
	touch $(FUZZ_STAMP)

fuzz: $(FUZZ_STAMP)
	status=0; \
	$(PY) -m tests.fuzz.run_atheris all --seconds $(FUZZ_SECONDS) || status=1; \
	ETCH_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ETCH_FUZZ_API_SECONDS=$(FUZZ_API_SECONDS) \
	  $(PY) -m pytest -q -p no:cacheprovider --timeout=3600 tests/fuzz || status=1; \
	exit $$status

run: $(STAMP)
	$(PY) -m server.devrun --data-dir $(DATA)

lint: $(STAMP)
	$(PY) -m ruff check .

typecheck: $(STAMP)
	$(PY) -m mypy

unit: $(STAMP)
	$(PY) -m pytest -q

test: browser lint typecheck unit

bench: $(STAMP)
	$(PY) -m benchmarks.run

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache .hypothesis

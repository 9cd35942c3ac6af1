# The whole set-up on a fresh machine is `make run` or `make test`: both create .venv and
# install fusionkit with its dev extras first.

# The interpreter that creates .venv: the first of PYTHON_CANDIDATES that runs and is at least PYTHON_MIN, the
# lower bound of requires-python in pyproject.toml (tests/test_packaging.py keeps the two equal). python3 comes
# first, so a machine whose python3 is new enough (CI's is 3.11) keeps it; a pyenv shim of a version that is not
# active fails to run and is passed over. Choose another with `make PYTHON=python3.13`.
PYTHON_MIN        := 3.10
PYTHON_CANDIDATES := python3 python3.13 python3.12 python3.11 python3.10
PYTHON_OK          = import sys; sys.exit(sys.version_info[:2] < tuple(map(int, "$(PYTHON_MIN)".split("."))))
ifeq ($(origin PYTHON),undefined)
PYTHON := $(shell for c in $(PYTHON_CANDIDATES); do $$c -c '$(PYTHON_OK)' >/dev/null 2>&1 && { command -v $$c; break; }; done)
endif
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench book clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@$(if $(PYTHON),$(PYTHON) -c '$(PYTHON_OK)' 2>/dev/null,false) || { echo "error: no Python >= $(PYTHON_MIN) found (tried PYTHON=$(or $(PYTHON),one of $(PYTHON_CANDIDATES))); install one, or run make PYTHON=/path/to/python3.X" >&2; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $(STAMP)

# Builds the puzzles and their flow, then executes every notebook at teaching parameters.
run: $(STAMP)
	$(VENV)/bin/fusionkit run-notebooks --out build

# Renders make run's executed notebooks (build/*.ipynb) as a static site in build/book/html, without executing
# them (fusionkit/lab/book.py); no network. `fusionkit book --smoke` builds a test book from SMOKE=True runs.
book: $(STAMP)
	$(VENV)/bin/fusionkit book

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf build data .pytest_cache

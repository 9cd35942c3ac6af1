# The whole set-up on a fresh machine is `make run` or `make test`: both create .venv and
# install fusionkit with its dev extras first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install run test bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[dev]"
	$(PY) -m ipykernel install --prefix $(VENV) --name python3 >/dev/null
	touch $(STAMP)

# Builds the puzzles and their flow, then executes every notebook at teaching parameters.
run: $(STAMP)
	$(VENV)/bin/fusionkit run-notebooks --out build

test: $(STAMP)
	$(PY) -m pytest

bench: $(STAMP)
	$(PY) benchmarks/data_pipeline.py

clean:
	rm -rf build data .pytest_cache

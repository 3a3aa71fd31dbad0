# Two commands on a fresh machine with Python 3.11, pip and make:
#   make demo   install, then run `worldtune demo` (simulate a robot, train a tiny world model, evaluate)
#   make test   install, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# A CPU build when one is at hand; on a GPU machine: make install TORCH_SPEC=torch
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo test lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install --quiet "$(TORCH_SPEC)"
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

demo: install
	$(BIN)/worldtune demo --out runs/demo

# Two worker processes (pytest-xdist): every test runs single-threaded (tests/conftest.py), so the two
# cores of the target machine each take one; about half the serial time.
test: install
	$(BIN)/python -m pytest -q -n 2

lint: install
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) runs .pytest_cache

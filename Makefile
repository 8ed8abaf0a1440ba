# make demo: set up and run the default comparison. make test: set up and run the test suite.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: demo test setup clean

# torch first and pinned (constraints.txt), so that nothing pulls a CUDA build. --no-compile:
# byte-compiling all of torch up front costs half a minute; Python compiles what it imports.
PIP := $(BIN)/pip install --quiet --no-compile -c constraints.txt

$(STAMP): pyproject.toml constraints.txt examples/plugin/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) torch
	$(PIP) -e '.[test,plot]' -e examples/plugin
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	rm -rf demo-results
	$(BIN)/plugformer compare --demo --out demo-results

# Two workers, one file each at a time: the tests pin torch to one thread, so two cores run
# the suite in about half the time (5 min instead of 9 on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

clean:
	rm -rf $(VENV) demo-results .pytest_cache

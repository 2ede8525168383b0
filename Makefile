# Breedline: every entry point sets itself up on a fresh clone.
#   make test   - create .venv, install the pins, run the whole test suite
#   make demo   - run the whole pipeline locally (upload -> tune -> train -> deploy -> predict)
#   make bench  - benchmarks; they print figures and never fail on a slow machine

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# pip on some machines is capped below our torch pin by a global constraint
# file; our requirements file is the only constraint we want.
PIP := PIP_CONSTRAINT=/dev/null $(VENV)/bin/pip
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: venv test demo bench bench-quick clean

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

demo: $(STAMP)
	$(PY) -m breedline demo $(if $(DATA),--data $(DATA),)

bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf .breedline .pytest_cache

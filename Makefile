# Breedline: every entry point sets itself up on a fresh clone.
#   make test   - create .venv, install the pins, run the test suite
#   make test-e2e - the slow end-to-end pipeline runs (whole local runtimes)
#   make test-containers - the ML scripts on the AWS containers' versions, through
#                 AWS's own training and serving toolkits (.venv-containers)
#   make demo   - run the whole pipeline locally (upload -> tune -> train -> deploy -> predict);
#                 DATA=folder, ARGS=--keep-running, BATCH=folder (see the demo target)
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

.PHONY: venv test test-e2e test-containers demo bench bench-quick clean

venv: $(STAMP)

# The pins first, then the project itself, editable and without dependencies:
# its .pth file puts the three import roots on the path (pyproject.toml).
$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --disable-pip-version-check -q -r requirements.txt
	$(PIP) install --disable-pip-version-check -q --no-deps -e .
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -m "not e2e" $(PYTEST_ARGS)

# The slow end-to-end runs (pytest's e2e marker: a whole local runtime from
# upload to /predict, once per Debugger mode, and the failure paths); CI runs
# them after make test.
test-e2e: $(STAMP)
	$(PY) -m pytest -m e2e $(PYTEST_ARGS)

# The container-matched environment, in two steps as in AWS: the image
# (requirements-containers.txt: Python 3.12, torch 2.6, sagemaker-training 5.x,
# sagemaker-pytorch-inference), then our source dir's and model code's
# requirements on top, as the toolkits pip-install them at job start. That
# second step downgrades protobuf below what sagemaker-training 5.x declares;
# instead of a blanket pip check, tests/containers/test_known_conflicts.py
# fails on any conflict but the known, explained ones. Python 3.12 from
# .ci/python312; CONTAINERS_PYTHON=... picks another.
CVENV := .venv-containers
CPY := $(CVENV)/bin/python
CPIP := PIP_CONSTRAINT=/dev/null $(CVENV)/bin/pip
CSTAMP := $(CVENV)/.installed
CONTAINERS_PYTHON ?= $(shell .ci/python312 2>/dev/null)
CONFLICTS_TEST := tests/containers/test_known_conflicts.py

$(CSTAMP): requirements-containers.txt ml_scripts/requirements.txt ml_scripts/serving_requirements.txt pyproject.toml
	@test -n "$(CONTAINERS_PYTHON)" || { echo "make test-containers: no Python 3.12 (see .ci/python312); set CONTAINERS_PYTHON=/path/to/python3.12" >&2; exit 2; }
	test -x $(CPY) || $(CONTAINERS_PYTHON) -m venv $(CVENV)
	$(CPIP) install --disable-pip-version-check -q -r requirements-containers.txt
	$(CPIP) install --disable-pip-version-check -q -r ml_scripts/requirements.txt -r ml_scripts/serving_requirements.txt
	$(CPIP) install --disable-pip-version-check -q --no-deps -e .
	$(CPY) -m pytest -q -p no:cacheprovider $(CONFLICTS_TEST)
	touch $(CSTAMP)

# tests/containers is not in the default testpaths (it needs the toolkits).
test-containers: $(CSTAMP)
	$(CPY) -m pytest tests/ml tests/containers $(PYTEST_ARGS)

# make demo DATA=folder ARGS="--keep-running --per-class 0" BATCH=folder: DATA is your data set,
# ARGS goes to `python -m breedline demo` as is (python -m breedline demo --help), BATCH is a
# folder to predict with a Batch Transform job once the demo's model is live (docs/local.md).
# Each run writes .breedline/runs/<UTC time>/; .breedline/latest is the newest.
demo: $(STAMP)
	$(PY) -m breedline demo $(if $(DATA),--data $(DATA),) $(ARGS)$(if $(BATCH), --batch $(BATCH),)

bench: $(STAMP)
	$(PY) -m bench

bench-quick: $(STAMP)
	$(PY) -m bench --quick

clean:
	rm -rf .breedline .pytest_cache

# Deploy one stage to AWS (see docs/aws.md). Dry run (no AWS calls): add
# DRY_RUN=1, or use make's own --dry-run/-n: the "+" runs the recipe anyway and
# passes --dry-run on. REGION, ALERT_EMAIL, STACK and DEPLOY_ARGS are optional.
STAGE ?= dev
_DEPLOY_DRY := $(if $(DRY_RUN)$(findstring n,$(firstword -$(MAKEFLAGS))),--dry-run,)
_DEPLOY_COMMON = --stage $(STAGE) $(if $(REGION),--region $(REGION),) $(if $(STACK),--stack-name $(STACK),)

.PHONY: deploy destroy
deploy:
	+@test -x $(PY) || $(MAKE) venv
	+$(PY) -m breedline.deploy deploy $(_DEPLOY_COMMON) $(_DEPLOY_DRY) $(if $(ALERT_EMAIL),--alert-email $(ALERT_EMAIL),) $(DEPLOY_ARGS)

# Removes the stack and the endpoints/models/configs the pipeline created; keeps
# the data bucket unless DELETE_BUCKET=1.
destroy: $(STAMP)
	$(PY) -m breedline.deploy destroy $(_DEPLOY_COMMON) $(if $(DELETE_BUCKET),--delete-bucket,)

# The two commands: `make dev` (the whole platform locally) and `make test` (the whole suite).
# Both bootstrap themselves: a .venv with the pinned requirements, nothing else to install by hand.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# checkov lives in its own virtualenv: it bundles bc-python-hcl2, whose hcl2 module clashes with python-hcl2's.
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed

.PHONY: dev demo test lint typecheck imports bench build clean soak openapi smoke infra-check

$(STAMP): requirements.txt requirements-dev.txt constraints.txt $(wildcard functions/*/requirements.txt)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.txt -c constraints.txt
	@touch $(STAMP)

venv: $(STAMP)

$(CHECKOV_STAMP): requirements-checkov.txt
	@test -x $(CHECKOV_VENV)/bin/python || $(PYTHON) -m venv $(CHECKOV_VENV)
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	@$(CHECKOV_VENV)/bin/python -m pip install --quiet --disable-pip-version-check -r requirements-checkov.txt
	@touch $(CHECKOV_STAMP)

dev: $(STAMP)  ## run every function, the Firestore emulator, the S3 store and the task dispatcher
	$(PY) -m dev.stack

demo: $(STAMP)  ## run the scripted end-to-end demo against a running `make dev`
	$(PY) -m dev.demo

test: $(STAMP) infra-check  ## lint, type-check, the import contract, checkov and the whole test suite (starts its own emulator)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy shared functions dev bench
	$(VENV)/bin/lint-imports
	$(PY) -m dev.run_tests $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check . && $(PY) -m ruff format --check .

typecheck: $(STAMP)
	$(PY) -m mypy shared functions dev bench

imports: $(STAMP)  ## the import contract (layers, no cycles, Google's SDKs only in adapters)
	$(VENV)/bin/lint-imports

openapi: $(STAMP)  ## rewrite docs/openapi.json (the merged API contract) from the route tables, validated
	$(PY) -m dev.openapi

# Offline: no policy download, no update check. terraform fmt and the HCL-against-manifest checks are in
# tests/unit/test_terraform.py (terraform validate/plan need providers, which cannot be downloaded here).
infra-check: $(CHECKOV_STAMP)  ## checkov on infra/terraform (every skip justified inline)
	CKV_SKIP_PACKAGE_UPDATE_CHECK=true BC_SKIP_MAPPING=true $(CHECKOV_VENV)/bin/checkov -d infra/terraform \
		--framework terraform --skip-download --quiet --compact

bench: $(STAMP)  ## print cold-import times and API latencies against the emulator
	$(PY) -m bench.run

soak: $(STAMP)  ## the billing lifecycle state machine on in-memory ports, 100,000 examples; prints the count run
	EPOX_PROPERTY_EXAMPLES=$(or $(SOAK_EXAMPLES),100000) $(PY) -m pytest -q -s -p no:cacheprovider \
		tests/unit/test_billing_lifecycle_properties.py -k in_memory

build: $(STAMP)  ## one deployable folder per function in build/<name>/ (+ zip); REMBG_MODEL=path ships the model
	$(PY) -m dev.package $(if $(REMBG_MODEL),--rembg-model $(REMBG_MODEL))

smoke: $(STAMP)  ## after a deploy: every function answers /health, workers refuse strangers (BASE_URL=https://REGION-PROJECT.cloudfunctions.net)
	$(PY) -m dev.smoke $(or $(BASE_URL),$(error BASE_URL=https://REGION-PROJECT.cloudfunctions.net is required))

clean:
	rm -rf build .dev .pytest_cache .mypy_cache .ruff_cache

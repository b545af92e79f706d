# Two commands on a fresh machine: `make demo` runs it, `make test` checks it. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
CONFORMANCE ?= test_cli.py test_publish.py test_http.py test_manifest.py test_security.py
PYTEST_FLAGS ?= -q

.PHONY: venv lint test conformance demo demo-serve bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

lint: venv
	$(VENV)/bin/ruff check sidecar tests bench examples
	$(VENV)/bin/ruff format --check sidecar tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile

test: lint
	$(VENV)/bin/pytest $(PYTEST_FLAGS) tests

# The contract's black-box suite (read-only, beside this repository): CONFORMANCE names the files.
conformance: venv
	cd $(SHARED)/conformance && SIDECAR_CMD="$(abspath $(PY)) -m sidecar" $(abspath $(VENV))/bin/pytest $(PYTEST_FLAGS) $(CONFORMANCE)

demo: venv
	$(PY) examples/demo.py

demo-serve: venv
	$(PY) examples/demo.py serve

bench: venv
	$(PY) bench/run.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-workspace

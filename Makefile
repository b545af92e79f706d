# Two commands on a fresh machine: `make demo` runs it, `make test` checks it. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
SHARED ?= ../shared
CONFORMANCE ?= .
PYTEST_FLAGS ?= -q

.PHONY: venv sysdeps lint test conformance demo demo-serve bench soak clean image image-test image-lock

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

# The demos need only the runtime dependencies: a developer's .venv when it is there (it has them all),
# else .venv-demo with `pip install -e .` and no dev extra: ~100 MB and ~15 s on a fresh clone, where the
# dev venv is ~820 MB and ~30 s.
DEMO_VENV ?= $(if $(wildcard $(VENV)/.installed),$(VENV),.venv-demo)

.venv-demo/.installed: pyproject.toml
	$(PYTHON) -m venv .venv-demo
	.venv-demo/bin/pip install -q --disable-pip-version-check -e .
	touch $@

# Debian packages the tests use, installed when missing and we are root (CI and these machines are).
# systemd-analyze (unit-file test), chromium (browser tests), ffmpeg (a real video for them), unzip (archive tests).
SYSDEPS := systemd-analyze:systemd chromium:chromium ffmpeg:ffmpeg unzip:unzip
sysdeps:
	@missing=""; for d in $(SYSDEPS); do command -v $${d%%:*} >/dev/null 2>&1 || missing="$$missing $${d#*:}"; done; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "apt-get install$$missing"; apt-get update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "note: missing$$missing (not root, or no apt-get): the tests that need them are skipped"; fi; \
	fi

lint: venv
	$(VENV)/bin/ruff check sidecar tests bench examples image
	$(VENV)/bin/ruff format --check sidecar tests bench examples image
	$(VENV)/bin/mypy
	$(VENV)/bin/hadolint Dockerfile image/Dockerfile.selfcontained

test: lint sysdeps
	$(VENV)/bin/pytest $(PYTEST_FLAGS) tests

# The contract's black-box suite (read-only, beside this repository): CONFORMANCE names the files.
conformance: venv
	cd $(SHARED)/conformance && SIDECAR_CMD="$(abspath $(PY)) -m sidecar" $(abspath $(VENV))/bin/pytest $(PYTEST_FLAGS) $(CONFORMANCE)

demo: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python examples/demo.py

demo-serve: $(DEMO_VENV)/.installed
	$(DEMO_VENV)/bin/python examples/demo.py serve

# The end-to-end scenario N times with seeded random faults (tests/e2e/soak.py --help for the faults).
N ?= 100
SEED ?= 1
SOAK_FLAGS ?=
soak: venv
	$(PY) tests/e2e/soak.py --runs $(N) --seed $(SEED) $(SOAK_FLAGS)

# The images, built with Debian's podman on debootstrap bases, no registry (image/build.sh):
# `make image` saves docker-archives under build/image/; `make image-test` smoke-tests both images.
IMAGES ?= pip selfcontained
image:
	image/build.sh build $(IMAGES)

image-test: venv
	image/build.sh exec $(IMAGES) -- $(VENV)/bin/pytest $(PYTEST_FLAGS) image/test_image.py

# Re-pin the images' packages after pyproject's dependencies change (tests/test_image_lock.py checks).
image-lock:
	$(PYTHON) image/lock.py

bench: venv
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .venv-demo build *.egg-info .pytest_cache .mypy_cache .ruff_cache demo-workspace

# One-command set-up: every target below creates .venv on first use.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

# Which torch build: TORCH_INDEX is the package index torch comes from. By default PyTorch's own CPU wheel
# index, so that nothing pulls a multi-GB CUDA build, unless an NVIDIA GPU is visible (nvidia-smi) or GPU=1:
# then TORCH_INDEX is empty, i.e. the default index (PyPI's torch is a CUDA build on Linux x86_64).
# Override either way: `make test TORCH_INDEX=` (CUDA build from PyPI), `make test GPU=1`, `make test GPU=0`,
# or another index, e.g. TORCH_INDEX=https://download.pytorch.org/whl/cu128.
# If TORCH_INDEX cannot be reached (an offline CI machine), a local torch==$(TORCH_VERSION)+cpu wheel that pip
# finds through its own configuration (find-links) is used instead; with neither, the install fails rather
# than fall back to a CUDA build.
CPU_TORCH_INDEX := https://download.pytorch.org/whl/cpu
GPU ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1 || echo 0)
TORCH_INDEX ?= $(if $(filter 1,$(GPU)),,$(CPU_TORCH_INDEX))

.PHONY: venv test test-serve test-ray lint demo train-grounded eval-grounded bench bench-quick gpu-check clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	@# torch first, pinned, from TORCH_INDEX (see above and README, "Install")
	@if [ -z "$(TORCH_INDEX)" ]; then \
	  echo "torch==$(TORCH_VERSION) from the default index (TORCH_INDEX is empty: a CUDA build on Linux x86_64)"; \
	  $(VPY) -m pip install --quiet "torch==$(TORCH_VERSION)"; \
	elif $(VPY) -c "import sys, urllib.request; urllib.request.urlopen(sys.argv[1].rstrip('/') + '/torch/', timeout=20)" "$(TORCH_INDEX)" 2>/dev/null; then \
	  echo "torch==$(TORCH_VERSION) from $(TORCH_INDEX)"; \
	  $(VPY) -m pip install --quiet "torch==$(TORCH_VERSION)" --index-url "$(TORCH_INDEX)"; \
	else \
	  echo "$(TORCH_INDEX) is unreachable: installing a local torch==$(TORCH_VERSION)+cpu wheel (pip's find-links)"; \
	  $(VPY) -m pip install --quiet "torch==$(TORCH_VERSION)+cpu" || { \
	    echo "error: no torch==$(TORCH_VERSION)+cpu: $(TORCH_INDEX) is unreachable and no local wheel was found; set TORCH_INDEX (empty for PyPI's CUDA build)" >&2; exit 1; }; \
	fi
	# the package and its dev extra; the torch above satisfies torch>=2.6 and is kept
	$(VPY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

test: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# Ray Serve scale-out test: installs the ray extra (a ~80 MB wheel, ~20 s here), then ~1 min on 2 cores
test-ray: venv
	$(VPY) -m pip install --quiet -e ".[serve,ray]"
	MMX_FAST_RAY_TESTS=1 $(VPY) -m pytest -q $(PYTEST_ARGS) tests/test_serve_ray.py

# every serving test: the HTTP server (also part of `make test`) and Ray Serve
test-serve: test-ray
	$(VPY) -m pytest -q $(PYTEST_ARGS) tests/test_serve.py

lint: venv
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .

# the trained grounded model on a few scenes, then the random-weight model on the photo (clearly labelled)
demo: venv
	$(VPY) -m mmx_fast demo --out demo_out
	$(VPY) -m mmx_fast demo --family qwen2_vl --out demo_out/random-weights

# Retrain the shipped grounded model from scratch (docs/design.md §8): one CPU thread, seeded, ~45 min here.
# Writes GROUNDED_OUT (a new folder); copy it over mmx_fast/grounded/weights to ship it. CI never runs this.
GROUNDED_OUT ?= grounded_out
train-grounded: venv
	$(VPY) -m mmx_fast.grounded.train --out $(GROUNDED_OUT)

# accuracy + localisation table of the shipped grounded model; writes its section of benches/RESULTS.md
eval-grounded: venv
	$(VPY) -m mmx_fast.grounded.evaluate --write-results

bench: venv
	$(VPY) benches/report.py

bench-quick: venv
	$(VPY) -m pytest benches/ -q --benchmark-disable

gpu-check:
	python3 benches/gpu_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

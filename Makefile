# One-command set-up: every target below creates .venv on first use, installing the locked set.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

# What gets installed: the locked set, requirements/cpu.lock (a constraints file written by `make lock`, i.e. uv),
# whose torch is PyTorch's CPU build, torch==$(TORCH_VERSION)+cpu: nothing pulls a multi-GB CUDA build. pip takes
# that wheel from wherever its own configuration looks (on this project's machines a local wheel folder); on
# another machine point pip at PyTorch's CPU wheels yourself (PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL).
# `make test LOCK=` installs the newest versions inside pyproject's ranges instead and keeps any torch>=2.6
# already in .venv (e.g. a CUDA build you installed there first).
LOCK ?= requirements/cpu.lock
PIP_LOCK := $(if $(strip $(LOCK)),-c $(LOCK),)
# the extras the lock covers (every extra but flash-attn, an sdist that needs a CUDA torch to build)
LOCK_EXTRAS ?= dev ray
# where `make lock` finds torch==$(TORCH_VERSION)+cpu: a folder or an index URL of yours
TORCH_WHEELS ?= /opt/wheels

.PHONY: venv lock test test-serve test-ray lint demo train-grounded eval-grounded bench bench-quick gpu-check clean

$(VENV)/.installed: pyproject.toml setup.py $(LOCK)
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
ifneq ($(strip $(LOCK)),)
	@# torch first and alone: a CPU build that pip cannot reach fails here, saying so, instead of pulling CUDA
	@$(VPY) -m pip install --quiet $(PIP_LOCK) torch || { echo "error: pip cannot reach torch==$(TORCH_VERSION)+cpu \
	(pinned in $(LOCK)); point PIP_FIND_LINKS or PIP_EXTRA_INDEX_URL at PyTorch's CPU wheels, or run with LOCK= \
	to keep a torch of your own in $(VENV) (README, Install)" >&2; exit 1; }
endif
	$(VPY) -m pip install --quiet $(PIP_LOCK) -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

# regenerate the lock: the newest versions inside pyproject's ranges, resolved by uv against the default index
# (plus TORCH_WHEELS for the CPU torch); commit it once `make test` passes on it
lock:
	uv pip compile pyproject.toml requirements/torch-cpu.in $(addprefix --extra ,$(LOCK_EXTRAS)) \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_WHEELS) --upgrade \
	  --custom-compile-command "make lock" -o requirements/cpu.lock

test: venv
	$(VPY) -m pytest -q $(PYTEST_ARGS)

# Ray Serve scale-out test: installs the ray extra (a ~80 MB wheel, ~20 s here), then ~1 min on 2 cores
test-ray: venv
	$(VPY) -m pip install --quiet $(PIP_LOCK) -e ".[serve,ray]"
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

# Retrain the shipped grounded model from scratch (docs/design.md §9): one CPU thread, seeded; the shipped
# weights are its step-500 checkpoint (--stop-after 500: 21 min here under a load average of ~17).
# Writes GROUNDED_OUT (a new folder); copy it over mmx_fast/grounded/weights to ship it. CI never runs this.
GROUNDED_OUT ?= grounded_out
train-grounded: venv
	$(VPY) -m mmx_fast.grounded.train --out $(GROUNDED_OUT) --stop-after 500

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

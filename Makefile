# One-command set-up: every target below creates .venv on first use.
PY      ?= python3
VENV    ?= .venv
VPY     := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: venv test test-serve test-ray lint demo bench bench-quick gpu-check clean

$(VENV)/.installed: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(VPY) -m pip install --quiet --upgrade pip
	# torch first, pinned, so that nothing below pulls a multi-GB CUDA build (see README, "Install")
	$(VPY) -m pip install --quiet torch==$(TORCH_VERSION)
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

demo: venv
	$(VPY) -m mmx_fast demo --out demo_out

bench: venv
	$(VPY) benches/report.py

bench-quick: venv
	$(VPY) -m pytest benches/ -q --benchmark-disable

gpu-check:
	python3 benches/gpu_check.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

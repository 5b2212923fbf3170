# `make demo` and `make test` each create .venv and install everything first (fresh machine OK).
# Override TORCH_SPEC on a CUDA cluster, e.g.  make demo TORCH_SPEC='torch==2.13.0 --index-url ...'
PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# DeepSpeed JIT-compiles its C++ ops on first use: keep the cache inside the venv
export TORCH_EXTENSIONS_DIR := $(abspath $(VENV))/torch_extensions
export OMP_NUM_THREADS ?= 2

.PHONY: install demo test test-quick test-integration bench lint wheel clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,demo]'
	$(PY) -m hpc_modatts.distributed   # compile DeepSpeed's comm op now, not in the first job
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/hpc-modatts demo --out demo_out

# the whole suite: unit + multi-process DeepSpeed + the real single-node SLURM integration tests
test: $(STAMP)
	$(PY) -m pytest -q -ra tests

# unit tests only (no SLURM, no multi-process)
test-quick: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slurm and not distributed" tests

# ruff (lint rules and per-file exceptions in pyproject.toml; `ruff format` is the code style) and mypy on hpc_modatts/
lint: $(STAMP)
	$(VENV)/bin/ruff check hpc_modatts tests benchmarks
	$(VENV)/bin/ruff format --check hpc_modatts tests benchmarks
	$(VENV)/bin/mypy

# build the wheel, install it into a fresh venv outside the checkout, run the CLI from an empty folder
wheel: $(STAMP)
	bash .ci/check_wheel $(PY) '$(TORCH_SPEC)'

bench: $(STAMP)
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/zero.py

clean:
	rm -rf $(VENV) demo_out runs .mypy_cache .ruff_cache

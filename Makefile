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

.PHONY: install demo test test-quick test-integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e '.[dev,demo]'
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

bench: $(STAMP)
	$(PY) benchmarks/loader.py
	$(PY) benchmarks/memory.py
	$(PY) benchmarks/zero.py

clean:
	rm -rf $(VENV) demo_out runs

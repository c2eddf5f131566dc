# One command each on a fresh machine: `make demo`, `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
# torch is pinned so that pip takes the CPU wheel on CPU hosts (see docs/design.md);
# on a GPU host, install the matching CUDA build of torch 2.13.0 first.
TORCH  ?= torch==2.13.0
EXTRAS ?= test,onnx,ray

.PHONY: setup demo reproduce test test-fast bench lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/t2i-audit demo

# The paper's evaluation on the tiny zoo (about 80 minutes on 2 cores; docs/reproduction.md).
reproduce: setup
	$(VENV)/bin/t2i-audit reproduce --scale tiny --out reproduction-out

test: setup
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow"

bench: setup
	$(PY) bench/generate.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf demo-out reproduction-out .pytest_cache .ruff_cache

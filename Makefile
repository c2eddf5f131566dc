# One command each on a fresh machine: `make demo`, `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
# torch is pinned so that pip takes the CPU wheel on CPU hosts (see docs/design.md);
# on a GPU host, install the matching CUDA build of torch 2.13.0 first.
TORCH  ?= torch==2.13.0
EXTRAS ?= test,onnx,ray

.PHONY: setup demo reproduce test test-fast bench bench-gpu lint clean

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

# On a CUDA host with TensorRT (make setup EXTRAS=test,gpu, or the GPU image): SD 1.5-size
# random weights, fp16, torch vs ONNX Runtime vs TensorRT (docs/benchmarks.md).
GPU_BENCH ?= .cache/bench-gpu
bench-gpu: setup
	$(PY) bench/unet.py --arch sd15 --dtype float16 --workdir $(GPU_BENCH)
	$(PY) -c "from export.testing import build_sd15_pipeline; build_sd15_pipeline('$(GPU_BENCH)')"
	$(PY) bench/generate.py --model $(GPU_BENCH)/model --dtype float16 --batch-size 8 --no-rss

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf demo-out reproduction-out .pytest_cache .ruff_cache .cache/bench-gpu

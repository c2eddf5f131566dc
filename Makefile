# One command each on a fresh machine: `make demo`, `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.setup-stamp
# torch is pinned (2.13.0). PyPI's default torch wheel for Linux is the CUDA build (GBs); on a
# CPU host with PyPI, TORCH_INDEX=https://download.pytorch.org/whl/cpu takes the CPU wheel (this
# project's machines get it from their package mirror, so the default adds no index). On a GPU
# host, install a CUDA 12 build of torch 2.13.0 first and use EXTRAS=test,gpu (README).
TORCH  ?= torch==2.13.0
TORCH_INDEX ?=
EXTRAS ?= test,onnx,ray
VERIFY_VENV ?= .cache/venv-verify

.PHONY: setup setup-verify demo reproduce test test-fast bench bench-gpu gpu-check lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip "setuptools>=77"
	$(PY) -m pip install --quiet $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)) "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

# A venv that can only verify signed reports: the package without its dependencies, plus the
# `verify` extra (no torch, diffusers, transformers, matplotlib or peft). README: "Verify-only install".
setup-verify:
	test -x $(VERIFY_VENV)/bin/python || python3 -m venv $(VERIFY_VENV)
	$(VERIFY_VENV)/bin/python -m pip install --quiet --no-deps -e .
	$(VERIFY_VENV)/bin/python -c 'import importlib.metadata as m, re; print("\n".join(r.split(";")[0] for r in m.requires("t2i-auditor") if re.search(r"extra\s*==\s*.verify.", r)))' > $(VERIFY_VENV)/verify-requirements.txt
	$(VERIFY_VENV)/bin/python -m pip install --quiet -r $(VERIFY_VENV)/verify-requirements.txt

demo: setup
	$(VENV)/bin/t2i-audit demo

# The paper's evaluation on the tiny zoo (about 80 minutes on 2 cores; docs/reproduction.md).
reproduce: setup
	$(VENV)/bin/t2i-audit reproduce --scale tiny --out reproduction-out

# Two pytest workers, one test file each at a time (--dist loadfile: a file's module-scoped zoo
# is built once): the tests run one torch thread each, and the two tiny-zoo integration files
# (SD and SDXL, several minutes each) then train side by side instead of one after the other.
PYTEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile

test-fast: setup
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) --dist loadfile -m "not slow"

bench: setup
	$(PY) bench/generate.py

# On a CUDA host with TensorRT (make setup EXTRAS=test,gpu, or the GPU image): SD 1.5-size
# random weights, fp16, torch vs ONNX Runtime vs TensorRT (docs/benchmarks.md).
GPU_BENCH ?= .cache/bench-gpu
bench-gpu: setup
	$(PY) bench/unet.py --arch sd15 --dtype float16 --workdir $(GPU_BENCH)
	$(PY) -c "from export.testing import build_sd15_pipeline; build_sd15_pipeline('$(GPU_BENCH)')"
	$(PY) bench/generate.py --model $(GPU_BENCH)/model --dtype float16 --batch-size 8 --no-rss

# On a CUDA host with TensorRT: GPU tests, SD 1.5-size engines and benches in order of value within
# GPU_BUDGET seconds; writes $(GPU_OUT) even when stopped (bench/gpu_check.py). On a CPU host
# it records the environment and says why each GPU step was skipped.
GPU_BUDGET ?= 570
GPU_OUT ?= .cache/gpu-check.json
gpu-check: setup
	$(PY) bench/gpu_check.py --out $(GPU_OUT) --workdir .cache/gpu-check --budget-s $(GPU_BUDGET)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

clean:
	rm -rf demo-out reproduction-out .pytest_cache .ruff_cache .cache/bench-gpu .cache/gpu-check .cache/gpu-check.json

"""ONNX Runtime sessions, made the same way at export (validation) and at generation time.

Pitfalls this module exists for (shared/design.md section 3):
- onnxruntime-gpu on a host without a usable GPU lists the CUDA and TensorRT providers
  and then silently runs on the CPU. A provider counts only when
  `session.get_providers()` lists it after the session was created.
- Offline-optimized graphs are specific to the provider that optimized them: the
  `model.ort.onnx` written at export was optimized for the CPU provider and is only
  loaded by it; GPU providers load the portable `model.onnx` and optimize online.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from auditor.errors import BadInputError

CPU_PROVIDER = "CPUExecutionProvider"
CUDA_PROVIDER = "CUDAExecutionProvider"
TENSORRT_PROVIDER = "TensorrtExecutionProvider"
PROVIDER_ALIASES = {"cpu": CPU_PROVIDER, "cuda": CUDA_PROVIDER, "tensorrt": TENSORRT_PROVIDER}

# Offline levels tried at export, best first; "none" keeps the portable graph.
OFFLINE_LEVELS = ("extended", "basic", "none")


def provider_name(name: str) -> str:
    full = PROVIDER_ALIASES.get(name.lower(), name)
    if not full.endswith("ExecutionProvider"):
        raise BadInputError(
            f"ONNX Runtime provider {name!r}: expected cpu, cuda, tensorrt or a full provider name"
        )
    return full


def available_providers() -> list[str]:
    import onnxruntime as ort

    return list(ort.get_available_providers())


def default_threads() -> int:
    """Follow torch's intra-op setting, so `--threads` / tests' 1 thread apply to both runtimes."""
    import torch

    return max(1, int(torch.get_num_threads()))


def session_options(threads: int | None = None, level: str = "all"):
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads or default_threads()
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    so.graph_optimization_level = {
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    }[level]
    return so


def make_session(
    path: str | os.PathLike[str],
    providers: Sequence[str | tuple[str, dict]] = (CPU_PROVIDER,),
    threads: int | None = None,
):
    """An InferenceSession on `providers` (in order); the caller checks `get_providers()`."""
    import onnxruntime as ort

    return ort.InferenceSession(str(path), session_options(threads), providers=list(providers))


def optimize_offline(
    src: Path, dst: Path, level: str, external_data: bool, threads: int | None = None
) -> None:
    """Write ONNX Runtime's `level`-optimized graph of `src` for the CPU provider to `dst`."""
    import onnxruntime as ort

    so = session_options(threads, level)
    so.optimized_model_filepath = str(dst)
    if external_data:
        so.add_session_config_entry(
            "session.optimized_model_external_initializers_file_name", dst.name + ".data"
        )
        so.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    ort.InferenceSession(str(src), so, providers=[CPU_PROVIDER])

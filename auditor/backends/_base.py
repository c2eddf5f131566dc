"""What every backend shares: the Generator protocol, BackendInfo, and the small rules around them.

Every audit step that touches a model goes through `Generator.generate`, with numpy at
the boundary, so a diffusers folder on torch, an engine bundle on ONNX Runtime or
TensorRT, and a black-box HTTP suspect are interchangeable and a report can name which
one ran (`describe()`).

Seeds always seed a *CPU* torch.Generator per image: the initial latent noise for a
seed is then the same on any device and independent of its position in a batch, which
is what makes a key (prompt, seed) meaningful across machines.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, get_args, runtime_checkable

import numpy as np

from auditor.config import FrozenModel, GenerationSettings
from auditor.errors import BadInputError

DType = Literal["float32", "float16", "bfloat16"]
DTYPES: tuple[str, ...] = get_args(DType)
BackendName = Literal["torch", "torch-compiled", "onnx", "tensorrt"]
BACKENDS: tuple[str, ...] = get_args(BackendName)
ENGINE_BACKENDS: tuple[str, ...] = ("onnx", "tensorrt")  # run an exported engine bundle
TORCH_BACKENDS: tuple[str, ...] = ("torch", "torch-compiled")  # run a diffusers pipeline in torch


class BackendInfo(FrozenModel):
    """What produced the pixels: enough to rerun on the same stack."""

    backend: str
    device: str
    dtype: str
    versions: dict[str, str]
    note: str | None = None  # e.g. why an engine bundle fell back to torch


@runtime_checkable
class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        """Return uint8 images (N, H, W, 3), one per (prompt, seed) pair."""
        ...

    def describe(self) -> BackendInfo: ...


@runtime_checkable
class Transcribed(Protocol):
    """A generator whose answers no file pins (a remote endpoint): it keeps a transcript of every
    query, whose digest a report cites instead of a model digest, and each query is slow enough
    for a progress bar of its own (`progress`, called with the queries answered so far)."""

    progress: Callable[[int], None] | None

    def queries_per_image(self) -> int:
        """Queries sent per image asked for (decoys included)."""
        ...

    def transcript_digest(self) -> str: ...

    def transcript_document(self, name: str) -> dict[str, Any]:
        """Every query sent and the sha256 of every image returned, for `name`'s transcript file."""
        ...


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def check_pairs(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    for seed in seeds:
        if not 0 <= int(seed) < 2**63:
            raise BadInputError(f"seed {seed}: expected an integer in [0, 2**63)")


def check_dtype(dtype: str) -> str:
    if dtype not in DTYPES:
        raise BadInputError(f"dtype {dtype!r}: expected {', '.join(DTYPES)}")
    return dtype


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"device {device!r}: no CUDA device is available on this host (use --device cpu)")
    if device.startswith("cuda:"):
        index, count = int(device.split(":", 1)[1]), torch.cuda.device_count()
        if index >= count:
            raise BadInputError(
                f"device {device!r}: this host has {count} CUDA device(s), cuda:0 to cuda:{count - 1}"
            )
    return device


def library_versions(**extra: str) -> dict[str, str]:
    """The libraries whose versions change pixels (a report records them), plus `extra`."""
    import diffusers
    import torch
    import transformers

    return {
        "torch": torch.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        **extra,
    }


def hf_offline_environment() -> None:
    """No hub access, no telemetry, no progress bars: set before diffusers/transformers load.
    Cheap (environment variables only), so the CLI sets it for every command."""
    for name, value in (
        ("HF_HUB_OFFLINE", "1"),
        ("TRANSFORMERS_OFFLINE", "1"),
        ("HF_HUB_DISABLE_TELEMETRY", "1"),
        ("HF_HUB_DISABLE_PROGRESS_BARS", "1"),
        ("TOKENIZERS_PARALLELISM", "false"),
        ("TRANSFORMERS_VERBOSITY", "error"),
        ("DIFFUSERS_VERBOSITY", "error"),
    ):
        os.environ.setdefault(name, value)


def quiet_hf_libraries() -> None:
    """No tqdm bars or warnings from diffusers/transformers while loading: our own progress and
    one-line errors are the only things the CLI prints on stderr."""
    hf_offline_environment()
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()

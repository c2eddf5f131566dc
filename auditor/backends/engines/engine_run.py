"""What running a TensorRT engine needs besides TensorRT itself: the typed errors, the CUDA side
(`CudaOps`: device scope, streams, buffers, CUDA graphs, through torch; tests replace it), the
per-profile state of an engine (`Slot`), profile choice and validation in profile-sized slices.

No `tensorrt` name is touched here (tests/test_trt_api.py holds every one of them to trt.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from auditor.backends.engines.bundle import load_validation
from auditor.backends.engines.components import DEFAULT_TOLERANCES, ComponentContract, ParityRecord, compare
from auditor.errors import BadInputError, TransientError

if TYPE_CHECKING:
    import torch


class EngineBuildError(BadInputError):
    """TensorRT cannot parse a graph or build an engine from it (at export: exit 2; at audit: a fallback)."""


class EngineDeserializeError(EngineBuildError):
    """`deserialize_cuda_engine` returned None: a plan of another TensorRT version or GPU, or a corrupt one.
    A cached or shipped plan that fails this way is a cache miss (rebuilt); a fresh build that does is fatal."""


class EngineRunError(TransientError):
    """TensorRT failed to execute an engine that loaded (out of memory, a lost device): exit 75, retry."""


class TensorRTCallError(EngineRunError):
    """A TensorRT call on a loaded engine reported failure: names the call, its tensor and shape, and why."""

    def __init__(self, call: str, why: str) -> None:
        self.call = call
        super().__init__(f"{call} {why}")


class CudaOps:
    """The CUDA side of running an engine (device scope, streams, buffers, CUDA graphs), through torch.

    The only place TrtEngine touches CUDA, so tests drive the run path on the CPU with a stand-in."""

    def __init__(self, device) -> None:
        self.device = device

    def scope(self):
        import torch

        return torch.cuda.device(self.device)

    def new_stream(self):
        import torch

        return torch.cuda.Stream(self.device)

    def current_stream(self):
        import torch

        return torch.cuda.current_stream(self.device)

    def handle(self, stream) -> int:
        return int(stream.cuda_stream)

    def on(self, stream):
        import torch

        return torch.cuda.stream(stream)

    def empty(self, shape: tuple[int, ...], dtype):
        import torch

        return torch.empty(shape, dtype=dtype, device=self.device)

    def new_graph(self):
        import torch

        return torch.cuda.CUDAGraph()

    def capture(self, graph, stream):
        """Stream capture into `graph` on `stream` (thread-local mode: other threads' CUDA calls
        neither break it nor end up in it)."""
        import torch

        return torch.cuda.graph(graph, stream=stream, capture_error_mode="thread_local")

    def replay(self, graph, stream) -> None:
        import torch

        with torch.cuda.stream(stream):
            graph.replay()

    def synchronize(self, stream) -> None:
        stream.synchronize()


@dataclass
class Slot:
    """One optimization profile in use: its execution context, static buffers and launch mode."""

    profile: int
    context: Any
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    static: bool  # min == max for every input: one shape, so a CUDA graph can replay it
    rows: int  # the rows the buffers hold (the profile's max)
    graph: Any = None
    launch: str = "enqueue (not run yet)"
    runs: int = 0
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)


def choose_profile(profile_rows: list[int], rows: int) -> int:
    """The smallest profile whose max rows hold `rows`; a typed error when none does."""
    candidates = [k for k, limit in enumerate(profile_rows) if limit >= rows]
    if not candidates:
        raise EngineBuildError(
            f"{rows} rows exceed the engine's largest profile ({max(profile_rows)}); callers split batches"
        )
    return min(candidates, key=lambda k: profile_rows[k])


def run_in_chunks(engine, feeds: dict[str, torch.Tensor], max_rows: int) -> dict[str, torch.Tensor]:
    """`engine(feeds)` in slices of at most `max_rows` rows, outputs concatenated (copied off the buffers)."""
    import torch

    rows = int(next(iter(feeds.values())).shape[0])
    parts: dict[str, list[torch.Tensor]] = {}
    for start in range(0, rows, max_rows):
        piece = {name: value[start : start + max_rows] for name, value in feeds.items()}
        for name, value in engine(piece).items():
            parts.setdefault(name, []).append(value.clone())
    return {name: torch.cat(values) for name, values in parts.items()}


def _sync(device) -> None:
    import torch

    if getattr(device, "type", "cpu") == "cuda":
        torch.cuda.synchronize(device)


def engine_parity(
    engine, contract: ComponentContract, validation: Path, precision: str, seed: int
) -> ParityRecord:
    """The validation file's inputs through `engine`, in slices its profiles accept, against torch's outputs."""
    import torch

    inputs, references = load_validation(validation)
    feeds = {name: torch.from_numpy(inputs[name]) for name in contract.input_names}
    outputs = run_in_chunks(engine, feeds, engine.max_rows)
    _sync(engine.device)
    got = {name: outputs[name].float().cpu().numpy() for name in contract.output_names}
    tolerance = contract.tolerance if precision == "fp32" else DEFAULT_TOLERANCES["fp16"]
    return compare(
        got, {k: np.asarray(v) for k, v in references.items()}, tolerance, f"tensorrt {precision}", seed
    )

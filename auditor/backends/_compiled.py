"""The torch-compiled backend: the torch backend's own pipeline, its UNet compiled for static shapes.

    SuspectSpec(model="sd15/", backend="torch-compiled", dtype="float16", batch_size=8)

It wraps a `TorchGenerator` (a diffusers folder, a single-file checkpoint or a LoRA on its
base: whatever the torch backend opened), so the pipeline, scheduler, seeds and loop are the
torch backend's and the images match it within float rounding. What changes is how the
UNet, where nearly all the time goes, runs:

- **SDPA attention.** diffusers' default processor (`AttnProcessor2_0`) calls PyTorch's
  `scaled_dot_product_attention`, whose fused flash / memory-efficient kernels are most of
  the gain in fp16. The classic `AttnProcessor` (explicit softmax over a materialized score
  matrix, which diffusers' `set_default_attn_processor` restores) is replaced wherever it is
  found; other processors (added-KV, IP-adapter) are kept.
- **Channels-last** memory format for the UNet and VAE: convolutions on tensor cores without
  layout transposes around every kernel.
- **`torch.compile` with static shapes** (`dynamic=False`), the mode by device type
  (`COMPILE_MODES`): on CUDA "reduce-overhead", which records CUDA graphs (one graph launch per
  UNet call instead of hundreds of kernel launches, which is what small batches wait on); on
  the CPU the default mode. `T2I_AUDITOR_COMPILE_MODE` overrides it (e.g.
  "max-autotune-no-cudagraphs"; longer compiles).
- **One compile per (shape, dtype).** Dynamo keeps one compiled graph per guard set, and every
  batch is padded to the generator's batch size (the padding rows repeat the last prompt and
  seed; their images are dropped), so an audit's UNet calls all have one shape: 2 x batch rows
  with guidance, batch rows without. Settings that change the latent size or the timestep
  dtype (another scheduler family) compile once more; past dynamo's `recompile_limit` (8
  shapes in one process) it runs that UNet eager with a warning, which an audit's padded
  batches never approach.

It needs nothing beyond torch: Triton on CUDA (torch's CUDA wheels bring it) and a C++
compiler on the CPU (inductor's CPU code). Where either is missing, the torch backend runs
eager and says why in `describe().note` (reported as backend "torch", like an engine bundle
that falls back). A compile that fails while generating is refused (BadInputError: the same
run would fail the same way), never silently replaced by eager images.

Reports record `backend: "torch-compiled"` with the compile mode, static batch, memory format
and attention in `versions`; references and suspects compare as with any other backend (the
audit token ignores the backend; a report whose references ran on another backend carries
the views' caution).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

import numpy as np

from auditor.backends._base import BackendInfo, check_pairs
from auditor.backends._diffusers import TorchGenerator
from auditor.config import GenerationSettings
from auditor.errors import BadInputError, first_line

BACKEND = "torch-compiled"
# torch.compile's mode by device type: CUDA graphs where there is CUDA (the padded batch keeps
# shapes static, which CUDA graphs need); the CPU has no graphs to record.
COMPILE_MODES: dict[str, str] = {"cuda": "reduce-overhead", "cpu": "default"}
MODE_ENV = "T2I_AUDITOR_COMPILE_MODE"
# the pipeline components laid out channels-last (the convolutional ones)
CHANNELS_LAST = ("unet", "vae")


def compile_mode(device: str) -> str:
    """The compile mode for `device` ("cuda[:N]" or "cpu"): `MODE_ENV` when set, else `COMPILE_MODES`."""
    import torch._inductor

    mode = os.environ.get(MODE_ENV) or COMPILE_MODES[device.split(":")[0]]
    modes = sorted(torch._inductor.list_mode_options())
    if mode not in modes:
        raise BadInputError(f"{MODE_ENV}={mode!r}: expected one of {', '.join(modes)}")
    return mode


def compile_unavailable(device: str) -> str | None:
    """Why torch.compile cannot run on `device` here, or None when it can."""
    import torch

    if not torch._dynamo.is_dynamo_supported():
        return f"torch.compile does not support this Python ({sys.version.split()[0]})"
    if device.startswith("cuda"):
        from torch.utils._triton import has_triton

        return None if has_triton() else "triton is not installed (torch's CUDA wheels bring it)"
    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        get_cpp_compiler()
    except Exception as exc:  # inductor raises its own InvalidCxxCompiler, or an OSError
        return f"no C++ compiler for inductor's CPU code ({first_line(exc, 120)})"
    return None


def use_sdpa(module) -> int:
    """Give every classic `AttnProcessor` of `module` diffusers' SDPA processor; return how many
    were replaced. Other processors (added-KV, IP-adapter) are kept: they are not the classic path."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    processors = getattr(module, "attn_processors", None)
    if not processors:
        return 0
    classic = [name for name, p in processors.items() if type(p) is AttnProcessor]
    if classic:
        module.set_attn_processor(
            {name: AttnProcessor2_0() if name in classic else p for name, p in processors.items()}
        )
    return len(classic)


def attention_kind(module) -> str:
    """What `versions["attention"]` records: "sdpa" when every attention of `module` goes through
    AttnProcessor2_0, else the processors' class names."""
    names = sorted({type(p).__name__ for p in getattr(module, "attn_processors", {}).values()})
    return "sdpa" if names in ([], ["AttnProcessor2_0"]) else ",".join(names)


def prepare_module(module):
    """The layout and attention the compiled path runs `module` (a UNet or VAE) with, in place:
    channels-last, SDPA attention. Shared with the benchmarks (bench/unet.py)."""
    import torch

    use_sdpa(module)
    return module.to(memory_format=torch.channels_last)


def compile_module(module, device: str) -> str:
    """Compile `module` in place (`nn.Module.compile`: it stays the same object and type, so a
    pipeline's `unet.config` and `unet.dtype` still read) for static shapes; return the mode."""
    mode = compile_mode(device)
    module.compile(mode=mode, dynamic=False)
    return mode


def pad_batch(prompts: Sequence[str], seeds: Sequence[int], size: int) -> tuple[list[str], list[int], int]:
    """(prompts, seeds) padded to a multiple of `size` with copies of the last pair, and the
    count to keep: every chunk the torch backend cuts then has `size` rows, one static shape."""
    keep = len(prompts)
    if keep == 0:
        return [], [], 0
    pad = -keep % size
    return list(prompts) + [prompts[-1]] * pad, [int(s) for s in seeds] + [int(seeds[-1])] * pad, keep


class TorchCompiledGenerator:
    """A TorchGenerator whose UNet runs compiled, channels-last, with SDPA attention (module doc)."""

    def __init__(self, inner: TorchGenerator) -> None:
        self.inner = inner
        self.batch_size = inner.batch_size
        pipe = inner.pipe
        for name in CHANNELS_LAST:
            if getattr(pipe, name, None) is not None:
                prepare_module(getattr(pipe, name))
        self.mode = compile_module(pipe.unet, inner.device)
        self._versions = {
            "compile_mode": self.mode,
            "compile_shapes": f"static, batch padded to {self.batch_size}",
            "memory_format": "channels_last",
            "attention": attention_kind(pipe.unet),
        }
        if inner.device.startswith("cuda"):
            import triton

            self._versions["triton"] = triton.__version__

    def describe(self) -> BackendInfo:
        info = self.inner.describe()
        return info.model_copy(update={"backend": BACKEND, "versions": {**info.versions, **self._versions}})

    def check_settings(self, settings: GenerationSettings) -> None:
        self.inner.check_settings(settings)

    def native_size(self) -> tuple[int, int]:
        return self.inner.native_size()

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: GenerationSettings,
        *,
        stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """The torch backend's images for (prompts, seeds), every batch padded to the static size."""
        import torch._dynamo.exc

        check_pairs(prompts, seeds)
        padded_prompts, padded_seeds, keep = pad_batch(prompts, seeds, self.batch_size)
        try:
            images = self.inner.generate(padded_prompts, padded_seeds, settings, stop=stop)
        except torch._dynamo.exc.TorchDynamoException as exc:
            raise BadInputError(
                f"{self.inner.path.name}: torch.compile failed ({type(exc).__name__}: {first_line(exc, 200)});"
                " rerun with --backend torch"
            ) from None
        return images[:keep]


def open_compiled(inner: TorchGenerator) -> TorchCompiledGenerator | TorchGenerator:
    """`inner` compiled (TorchCompiledGenerator), or `inner` itself, eager, with a note saying why
    torch.compile cannot run here."""
    reason = compile_unavailable(inner.device)
    if reason is None:
        return TorchCompiledGenerator(inner)
    note = f"{BACKEND} backend not used: {reason}; ran torch eager"
    inner.note = f"{inner.note}; {note}" if inner.note else note
    return inner

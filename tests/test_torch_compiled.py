"""The torch-compiled backend: how it is chosen and recorded, what it changes, its parity with torch.

Everything but the last test runs without compiling (torch.compile is lazy: nothing is built
before the first generation). The last test compiles the tiny UNet once on the CPU (about 5 s
with inductor's cache warm, a minute cold on a shared 2-core box: marked slow) and holds the
images to the ONNX parity limit of the conformance suite.
"""

from __future__ import annotations

import numpy as np
import pytest

from auditor.backends import BACKENDS, Generator, SuspectSpec, TorchGenerator, open_suspect
from auditor.backends._compiled import (
    MODE_ENV,
    TorchCompiledGenerator,
    compile_mode,
    open_compiled,
    pad_batch,
)
from auditor.config import GenerationSettings
from auditor.errors import BadInputError

PROMPTS = ["a red circle on a blue background", "a green square on a white background", "a blue star"]
# what tests/test_backends.py allows the onnx backend's fp32 graphs against torch (1/255 measured)
PARITY_LIMIT = 2


def _compiled(model, batch_size: int = 2) -> TorchCompiledGenerator:
    spec = SuspectSpec(model=str(model), backend="torch-compiled", device="cpu", batch_size=batch_size)
    generator = open_suspect(spec)
    assert isinstance(generator, TorchCompiledGenerator), generator.describe().note
    return generator


def test_the_backend_is_listed_once_and_parsed_everywhere_backends_are():
    from auditor.backends._factory import ON_TORCH
    from auditor.backends._spec import TORCH_BACKENDS
    from auditor.batch.job import RuntimeSpec, SuspectEntry
    from t2i_audit import build_parser

    assert "torch-compiled" in BACKENDS and tuple(ON_TORCH) == TORCH_BACKENDS
    assert SuspectSpec(model="m", backend="torch-compiled").backend == "torch-compiled"
    assert RuntimeSpec(backend="torch-compiled").backend == "torch-compiled"
    assert SuspectEntry(name="s", model="m", backend="torch-compiled").backend == "torch-compiled"
    with pytest.raises(ValueError):
        SuspectSpec(model="m", backend="torch-compile")
    args = build_parser().parse_args(
        ["audit", "--keys", "k", "--suspect", "s", "--backend", "torch-compiled"]
    )
    assert args.backend == "torch-compiled"


def test_records_itself_and_changes_layout_and_attention_not_the_model(tiny_pipeline):
    import torch

    generator = _compiled(tiny_pipeline)
    assert isinstance(generator, Generator)
    info = generator.describe()
    assert (info.backend, info.device, info.dtype, info.note) == ("torch-compiled", "cpu", "float32", None)
    assert info.versions["compile_mode"] == "default"  # CPU: no CUDA graphs
    assert info.versions["attention"] == "sdpa" and info.versions["memory_format"] == "channels_last"
    assert "batch padded to 2" in info.versions["compile_shapes"] and info.versions["torch"]
    unet = generator.inner.pipe.unet
    conv = next(m for m in unet.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert generator.native_size() == (32, 32)


def test_a_lora_suspect_compiles_too_and_keeps_its_note(tiny_pipeline, tmp_path):
    """Single-file checkpoints and LoRA files open as a TorchGenerator, which the backend wraps."""
    from lora_factory import write_lora

    from auditor.zoo.models import make_unet

    lora = write_lora(make_unet(0), tmp_path / "suspect-lora.safetensors")
    spec = SuspectSpec(model=str(lora), base=str(tiny_pipeline), backend="torch-compiled", device="cpu")
    generator = open_suspect(spec)
    info = generator.describe()
    assert isinstance(generator, TorchCompiledGenerator) and info.backend == "torch-compiled"
    assert info.note.startswith("LoRA suspect-lora.safetensors (") and info.versions["attention"] == "sdpa"


def test_the_classic_attention_processor_is_replaced_by_sdpa(tiny_pipeline):
    """The fp16 export and diffusers' set_default_attn_processor install the classic processor."""
    inner = TorchGenerator(tiny_pipeline, device="cpu", batch_size=2)
    inner.pipe.unet.set_default_attn_processor()
    inner.pipe.vae.set_default_attn_processor()
    assert {type(p).__name__ for p in inner.pipe.unet.attn_processors.values()} == {"AttnProcessor"}
    generator = open_compiled(inner)
    for part in (inner.pipe.unet, inner.pipe.vae):
        assert {type(p).__name__ for p in part.attn_processors.values()} == {"AttnProcessor2_0"}
    assert generator.describe().versions["attention"] == "sdpa"


def test_padding_keeps_every_batch_at_the_static_size():
    assert pad_batch(["a", "b", "c"], [1, 2, 3], 2) == (["a", "b", "c", "c"], [1, 2, 3, 3], 3)
    assert pad_batch(["a", "b"], [1, 2], 2) == (["a", "b"], [1, 2], 2)
    assert pad_batch(["a"], [9], 4) == (["a"] * 4, [9] * 4, 1)
    assert pad_batch([], [], 4) == ([], [], 0)


def test_without_a_compiler_it_runs_eager_and_says_so(tiny_pipeline, monkeypatch):
    import auditor.backends._compiled as compiled

    monkeypatch.setattr(compiled, "compile_unavailable", lambda device: "no C++ compiler (test)")
    spec = SuspectSpec(model=str(tiny_pipeline), backend="torch-compiled", device="cpu", batch_size=2)
    generator = open_suspect(spec)
    info = generator.describe()
    assert isinstance(generator, TorchGenerator) and info.backend == "torch"
    assert info.note == "torch-compiled backend not used: no C++ compiler (test); ran torch eager"


def test_bad_mode_and_compile_failures_are_one_line_refusals(tiny_pipeline, monkeypatch):
    import torch._dynamo.exc

    monkeypatch.setenv(MODE_ENV, "fastest")
    with pytest.raises(BadInputError, match=f"{MODE_ENV}='fastest': expected one of .*reduce-overhead"):
        compile_mode("cpu")
    monkeypatch.setenv(MODE_ENV, "max-autotune-no-cudagraphs")
    assert compile_mode("cuda:0") == "max-autotune-no-cudagraphs"
    monkeypatch.delenv(MODE_ENV)
    assert compile_mode("cuda:1") == "reduce-overhead"

    generator = _compiled(tiny_pipeline)

    def fail(*args, **kwargs):
        raise torch._dynamo.exc.InternalTorchDynamoError("inductor lost its way\n  at a traceback line")

    monkeypatch.setattr(generator.inner, "generate", fail)
    with pytest.raises(
        BadInputError,
        match=r"torch.compile failed \(InternalTorchDynamoError: inductor lost its way\); rerun with --backend torch$",
    ):
        generator.generate(PROMPTS[:1], [1], GenerationSettings(steps=2))


@pytest.mark.slow
def test_compiled_images_match_torch_eager_with_one_compile(tiny_pipeline):
    """Same seeds, same settings: the compiled UNet's images are torch eager's within the onnx
    parity limit, and batches of 3 and then 1 images (padded to 2) compile the UNet once."""
    from torch._dynamo.utils import counters

    settings = GenerationSettings(steps=4, guidance_scale=3.0)
    eager = TorchGenerator(tiny_pipeline, device="cpu", batch_size=2)
    generator = _compiled(tiny_pipeline)
    graphs = counters["stats"]["unique_graphs"]
    got = generator.generate(PROMPTS, [5, 6, 7], settings)
    alone = generator.generate(PROMPTS[1:2], [6], settings)
    assert counters["stats"]["unique_graphs"] - graphs == 1
    want = eager.generate(PROMPTS, [5, 6, 7], settings)
    assert got.shape == want.shape == (3, 32, 32, 3) and alone.shape == (1, 32, 32, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= PARITY_LIMIT
    assert np.abs(alone[0].astype(int) - want[1].astype(int)).max() <= PARITY_LIMIT

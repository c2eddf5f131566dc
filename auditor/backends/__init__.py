"""Every way to run a model, behind one Generator protocol and one factory.

    spec = SuspectSpec(model="suspect/", backend="torch")   # a folder, file, LoRA, bundle or URL
    generator = open_suspect(spec)                           # -> Generator
    images = generator.generate(prompts, seeds, settings)    # uint8 (N, H, W, 3)
    identify(spec)                                           # what a report cites for it

Kinds (`KINDS`): diffusers_folder, safetensors_file, lora_file, engine_bundle, http.
Pipelines (`PIPELINES`): StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline (SDXL).
Backends (`BACKENDS`): torch, torch-compiled (the torch pipeline, its UNet compiled for static
shapes: `_compiled`), onnx, tensorrt. A new kind or backend is one literal in `_spec.py` and
one branch (a torch backend: one `ON_TORCH` entry) in `_factory.py` (docs/architecture.md).
"""

from auditor.backends._base import DTYPES, BackendInfo, DType, Generator
from auditor.backends._diffusers import TorchGenerator
from auditor.backends._factory import Identity, identify, inspect_model, model_ref, open_suspect
from auditor.backends._http import HttpGenerator, HttpOptions
from auditor.backends._pipelines import (
    PIPELINES,
    SD_PIPELINE,
    SDXL_PIPELINE,
    PipelineInfo,
    conditioned_settings,
)
from auditor.backends._spec import BACKENDS, KINDS, BackendName, SuspectKind, SuspectSpec, detect_kind

__all__ = [
    "BACKENDS",
    "DTYPES",
    "KINDS",
    "PIPELINES",
    "SDXL_PIPELINE",
    "SD_PIPELINE",
    "BackendInfo",
    "BackendName",
    "DType",
    "Generator",
    "HttpGenerator",
    "HttpOptions",
    "Identity",
    "PipelineInfo",
    "SuspectKind",
    "SuspectSpec",
    "TorchGenerator",
    "conditioned_settings",
    "detect_kind",
    "identify",
    "inspect_model",
    "model_ref",
    "open_suspect",
]

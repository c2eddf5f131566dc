"""Every way to run a model, behind one Generator protocol and one factory.

    spec = SuspectSpec(model="suspect/", backend="torch")   # a folder, file, LoRA, bundle or URL
    generator = open_suspect(spec)                           # -> Generator
    images = generator.generate(prompts, seeds, settings)    # uint8 (N, H, W, 3)
    identify(spec)                                           # what a report cites for it

Kinds (`KIND_TABLE`, names in `KINDS`): http, engine_bundle, diffusers_folder, lora_file,
safetensors_file: each one object (detect, inspect, identify, check settings, open) that the
factory reads. HTTP dialects (`DIALECTS`): a1111, generic, comfyui: each one object (requests,
replies, the settings it can carry) that the HTTP client reads.
Pipelines (`PIPELINES`): StableDiffusionPipeline (SD 1.x/2.x), StableDiffusionXLPipeline (SDXL).
Backends (`BACKENDS`): torch, torch-compiled (the torch pipeline, its UNet compiled for static
shapes: `_compiled`), onnx, tensorrt. Where a new kind, dialect or backend goes:
docs/architecture.md. Modules outside this package import these names, never a `_module`
(`tests/test_architecture.py`).
"""

from auditor.backends._a1111 import (
    A1111_PATH,
    GENERIC_PATH,
    PayloadError,
    response_parameters,
    settings_values,
)
from auditor.backends._a1111 import SAMPLERS as A1111_SAMPLERS
from auditor.backends._base import (
    BACKENDS,
    DTYPES,
    BackendInfo,
    BackendName,
    DType,
    Generator,
    Transcribed,
    hf_offline_environment,
    quiet_hf_libraries,
    resolve_device,
)
from auditor.backends._dialect import HttpDialect
from auditor.backends._dialects import DIALECTS
from auditor.backends._diffusers import TorchGenerator
from auditor.backends._factory import check_settings, identify, inspect_model, model_ref, open_suspect
from auditor.backends._http import HttpGenerator
from auditor.backends._http_options import HttpApi, HttpOptions
from auditor.backends._kind import Identity, ModelKind
from auditor.backends._kinds import KIND_TABLE, detect_kind
from auditor.backends._pipelines import (
    PIPELINES,
    SD_PIPELINE,
    SDXL_PIPELINE,
    PipelineInfo,
    conditioned_settings,
    read_pipeline,
)
from auditor.backends._spec import KINDS, SuspectKind, SuspectSpec

__all__ = [
    "A1111_PATH",
    "A1111_SAMPLERS",
    "BACKENDS",
    "DIALECTS",
    "DTYPES",
    "GENERIC_PATH",
    "KINDS",
    "KIND_TABLE",
    "PIPELINES",
    "SDXL_PIPELINE",
    "SD_PIPELINE",
    "BackendInfo",
    "BackendName",
    "DType",
    "Generator",
    "HttpApi",
    "HttpDialect",
    "HttpGenerator",
    "HttpOptions",
    "Identity",
    "ModelKind",
    "PayloadError",
    "PipelineInfo",
    "SuspectKind",
    "SuspectSpec",
    "TorchGenerator",
    "Transcribed",
    "check_settings",
    "conditioned_settings",
    "detect_kind",
    "hf_offline_environment",
    "identify",
    "inspect_model",
    "model_ref",
    "open_suspect",
    "quiet_hf_libraries",
    "read_pipeline",
    "resolve_device",
    "response_parameters",
    "settings_values",
]

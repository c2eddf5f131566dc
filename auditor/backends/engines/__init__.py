"""Engine bundles at audit time: the bundle format, the exported components, ONNX Runtime and TensorRT.

A bundle is written by the export stage (`export.export_bundle`); everything that reads
or runs one lives here, so the audit never imports the exporter:

- `bundle`: the manifest (`bundle.json`), its verification, the validation data;
- `components`: one spec per exported component (tensors, torch wrapper, sample inputs,
  fp16 rules) and the contract every graph is held to;
- `loop`: the denoising loop the torch-free backends share;
- `ort`, `trt`: the onnx and tensorrt backends (and TensorRT engine building and caching);
- `open_bundle`: either backend, or the recorded fallback to torch on the source model.
"""

from auditor.backends.engines._open import FallbackGenerator, open_bundle
from auditor.backends.engines.bundle import BackendUnavailable, Bundle, BundleIntegrityError, load_bundle
from auditor.backends.engines.components import COMPONENTS, SPECS, ComponentSpec
from auditor.backends.engines.loop import NonFiniteOutputError, engine_precision

__all__ = [
    "COMPONENTS",
    "SPECS",
    "BackendUnavailable",
    "Bundle",
    "BundleIntegrityError",
    "ComponentSpec",
    "FallbackGenerator",
    "NonFiniteOutputError",
    "engine_precision",
    "load_bundle",
    "open_bundle",
]

"""The export stage: a diffusers pipeline compiled into an engine bundle for fast audits.

    export_bundle(model, out, precision="fp32" | "fp16", trt=False)   # `t2i-audit export`

ONNX graphs of the text encoder, UNet and VAE decoder (one spec per component,
`auditor.backends.engines.components`), each validated against torch, a manifest that
hashes every file and names the source model, and optionally TensorRT engines. What
reads and runs a bundle is the audit's (`auditor.backends.engines`): the export stage
depends on the auditor library, never the other way round. See docs/export.md.
"""

from export.errors import ExportError, ParityError
from export.exporter import check_options, export_bundle, parse_batch_sizes

__all__ = ["ExportError", "ParityError", "check_options", "export_bundle", "parse_batch_sizes"]

"""Export stage: compiles a diffusers pipeline into ONNX / TensorRT engines for fast audits.

- `export.exporter.export_bundle` / `t2i-audit export`: ONNX graphs + contract + manifest
- `export.manifest.load_bundle`: open a bundle, re-hash it, check its source model
- `export.generators.load_engine_generator`: the `onnx` and `tensorrt` Generator backends
- `export.loop`: the one denoising loop those backends share

See docs/export.md.
"""

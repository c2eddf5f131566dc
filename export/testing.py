"""Tiny random-weight Stable Diffusion pipelines for tests and benchmarks (seconds, no training).

The zoo's architecture (auditor/zoo/models.py) with untrained weights: every code path
of a real SD 1.x checkpoint (CLIP text encoder and tokenizer, UNet2DConditionModel,
AutoencoderKL, DDIM with SD's schedule) at a size that exports and runs in seconds.
"""

from __future__ import annotations

import os
from pathlib import Path


def build_tiny_pipeline(directory: str | os.PathLike[str], seed: int = 0) -> Path:
    """Save an untrained zoo-architecture pipeline to `directory/model`; return that folder."""
    from auditor.zoo.build import save_pipeline
    from auditor.zoo.models import TOKENIZER_MAX_LENGTH, make_text_encoder, make_unet, make_vae
    from auditor.zoo.tokenizer import build_clip_tokenizer
    from export.exporter import quiet_hf

    quiet_hf()
    root = Path(directory)
    tokenizer = build_clip_tokenizer(root / "tokenizer-build", model_max_length=TOKENIZER_MAX_LENGTH)
    save_pipeline(root / "model", make_unet(seed), make_vae(seed), make_text_encoder(seed), tokenizer)
    return root / "model"


_EXPORTED: dict[str, Path] = {}


def exported_bundle(model: str | os.PathLike[str], workdir: str | os.PathLike[str]) -> Path:
    """Export `model` once per process through the CLI (`t2i-audit export`) and reuse the bundle.

    Test modules share one export of the session's tiny pipeline; the first caller's
    `workdir` holds it. It carries both graph sets (`--precision fp16` adds the fp16
    graphs beside the fp32 ones), so fp32 and fp16 backends test against one bundle.
    """
    key = str(Path(model).resolve())
    if key not in _EXPORTED:
        from auditor.cli import main

        out = Path(workdir) / "bundle"
        args = ["export", str(model), "--out", str(out), "--batch-sizes", "1,16", "--precision", "fp16"]
        code = main(["--format", "json", *args])
        if code != 0:
            raise RuntimeError(f"t2i-audit export {model} exited {code}")
        _EXPORTED[key] = out
    return _EXPORTED[key]

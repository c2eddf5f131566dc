"""A single-file Stable Diffusion checkpoint (`.safetensors`, or a pickle torch's `weights_only` accepts).

Checkpoints are mostly shared in the original (LDM) layout. diffusers' `from_single_file`
converts them, but it needs the component configs of the architecture, which it would
download from the Hub; offline it needs a local diffusers folder of the same
architecture (`config`: only its configs and tokenizer are read, its weights are not).
"""

from __future__ import annotations

import os
from pathlib import Path

from auditor.backends._base import check_dtype, quiet_hf_libraries, resolve_device
from auditor.backends._diffusers import TorchGenerator, validate_pipeline_folder
from auditor.errors import BadInputError, first_line
from auditor.identity import (
    SAFETENSORS_SUFFIX,
    check_pickle_weights_only,
    read_safetensors_header,
    sniff_weights,
    unpickling_reason,
)


def load_single_file(
    path: Path, config: str | os.PathLike[str] | None, *, device: str, dtype: str, batch_size: int
) -> TorchGenerator:
    import torch
    from diffusers import StableDiffusionPipeline

    if config is None:
        raise BadInputError(
            f"{path}: a single-file checkpoint needs `config`, a local diffusers folder of the same architecture "
            "(offline, diffusers' from_single_file cannot fetch the component configs it needs)"
        )
    config_dir = Path(config)
    try:
        validate_pipeline_folder(config_dir)
    except BadInputError as exc:
        raise BadInputError(f"config for {path.name}: {exc}") from None
    # by content, not suffix: a pickle under any name is checked, anything else must be safetensors
    if sniff_weights(path) in ("pickle", "zip"):
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            raise BadInputError(f"{path}: named .safetensors, but its content is a pickle; refused")
        check_pickle_weights_only(path)
    else:
        read_safetensors_header(path)  # a truncated or malformed file fails here, with its name
    check_dtype(dtype)
    quiet_hf_libraries()
    device = resolve_device(device)
    try:
        pipe = StableDiffusionPipeline.from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            dtype=getattr(torch, dtype),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    except Exception as exc:  # diffusers raises many types while converting a checkpoint
        reason = unpickling_reason(exc) if "weights_only" in str(exc) else first_line(exc)
        raise BadInputError(
            f"{path.name}: could not load it as a single-file Stable Diffusion checkpoint with the configs of "
            f"{config_dir.name} ({type(exc).__name__}: {reason})"
        ) from None
    return TorchGenerator.from_pipeline(
        pipe,
        path=path,
        device=device,
        dtype=dtype,
        batch_size=batch_size,
        note=f"single-file checkpoint {path.name} with the component configs of {config_dir.name}",
    )

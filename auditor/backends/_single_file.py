"""A single-file Stable Diffusion checkpoint (`.safetensors`, or a pickle torch's `weights_only` accepts).

Checkpoints are mostly shared in the original (LDM) layout. diffusers' `from_single_file`
converts them, but it needs the component configs of the architecture, which it would
download from the Hub; offline it needs a local diffusers folder of the same
architecture (`config`: only its configs and tokenizer are read, its weights are not).
The pipeline class is the one that folder's model_index.json names (SD or SDXL); a
checkpoint whose tensor names belong to the other family (SDXL's `conditioner.embedders.*`,
SD's `cond_stage_model.*`) is refused before anything is converted.
"""

from __future__ import annotations

import os
from pathlib import Path

from auditor.backends._base import check_dtype, quiet_hf_libraries, resolve_device
from auditor.backends._diffusers import TorchGenerator, pipeline_kwargs
from auditor.backends._pipelines import PipelineInfo, checkpoint_pipeline, read_pipeline
from auditor.errors import BadInputError, first_line
from auditor.weights import (
    SAFETENSORS_SUFFIX,
    check_pickle_weights_only,
    read_safetensors_header,
    sniff_weights,
    unpickling_reason,
)


def load_single_file(
    path: Path, config: str | os.PathLike[str] | None, *, device: str, dtype: str, batch_size: int
) -> TorchGenerator:
    import diffusers
    import torch

    # by content, not suffix: a pickle under any name is checked, anything else must be safetensors
    if sniff_weights(path) in ("pickle", "zip"):
        if path.suffix.lower() == SAFETENSORS_SUFFIX:
            raise BadInputError(f"{path}: named .safetensors, but its content is a pickle; refused")
        check_pickle_weights_only(path)
    elif path.suffix.lower() != SAFETENSORS_SUFFIX:
        read_safetensors_header(path)  # not a pickle: it must be safetensors, whatever its name
    config_dir = Path(config) if config is not None else None
    info = check_single_file(path, config_dir)
    assert config_dir is not None
    check_dtype(dtype)
    quiet_hf_libraries()
    device = resolve_device(device)
    try:
        pipe = getattr(diffusers, info.pipeline).from_single_file(
            str(path),
            config=str(config_dir),
            local_files_only=True,
            dtype=getattr(torch, dtype),
            **pipeline_kwargs(info.pipeline),
        )
    except Exception as exc:  # diffusers raises many types while converting a checkpoint
        reason = unpickling_reason(exc) if "weights_only" in str(exc) else first_line(exc)
        raise BadInputError(
            f"{path.name}: could not load it as a single-file {info.pipeline} checkpoint with the configs of "
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


def check_single_file(path: Path, config_dir: Path | None) -> PipelineInfo:
    """Every check that reads no weights: the config folder's pipeline, the file's header, its family."""
    if config_dir is None:
        raise BadInputError(
            f"{path}: a single-file checkpoint needs `config`, a local diffusers folder of the same architecture "
            "(offline, diffusers' from_single_file cannot fetch the component configs it needs)"
        )
    try:
        info = read_pipeline(config_dir)
    except BadInputError as exc:
        raise BadInputError(f"config for {path.name}: {exc}") from None
    if path.suffix.lower() == SAFETENSORS_SUFFIX or sniff_weights(path) == "safetensors":
        # by content too: a safetensors file under another suffix is still checked (a pickle's
        # tensor names cannot be read without unpickling it, so its family is not checked here)
        names = read_safetensors_header(
            path
        ).keys()  # a truncated or malformed file fails here, with its name
        found = checkpoint_pipeline(names)
        if found is not None and found != info.pipeline:
            raise BadInputError(
                f"{path}: a single-file {found} checkpoint (by its tensor names), but the config folder's "
                f"{info.index} names a {info.pipeline}; expected a config folder of the same architecture"
            )
    return info

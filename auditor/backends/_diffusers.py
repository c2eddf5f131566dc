"""The torch backend: a diffusers Stable Diffusion pipeline, the reference every other backend matches.

Loads any Stable Diffusion folder in diffusers format (the tiny zoo, SD 1.5, SD 2.1) from
local files only; nothing is downloaded. Single-file checkpoints and LoRA files end up
here too, as a pipeline assembled elsewhere (`TorchGenerator.from_pipeline`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from auditor.backends._base import (
    BackendInfo,
    check_dtype,
    check_pairs,
    chunks,
    library_versions,
    quiet_hf_libraries,
    resolve_device,
)
from auditor.config import GenerationSettings
from auditor.errors import BadInputError, first_line
from auditor.identity import check_folder_pickles, unpickling_reason
from auditor.images import quantize

_SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "pndm": ("PNDMScheduler", {}),
    "euler": ("EulerDiscreteScheduler", {}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
    "dpm++": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++"}),
    "ddpm": ("DDPMScheduler", {}),
    "lms": ("LMSDiscreteScheduler", {}),
}


def make_scheduler(name: str, base_config: dict):
    """A scheduler of the named family built from the model's own noise-schedule config."""
    import diffusers

    class_name, overrides = _SCHEDULERS[name]
    return getattr(diffusers, class_name).from_config(base_config, **overrides)


def validate_pipeline_folder(path: Path) -> None:
    if not path.exists():
        raise BadInputError(f"{path}: model not found")
    if not path.is_dir():
        raise BadInputError(
            f"{path}: expected a diffusers pipeline folder (with model_index.json), got a file"
        )
    if not (path / "model_index.json").is_file():
        raise BadInputError(f"{path}: expected a diffusers pipeline folder, model_index.json is missing")
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if not (path / part).is_dir():
            raise BadInputError(f"{path}: expected a Stable Diffusion pipeline folder, '{part}/' is missing")


class TorchGenerator:
    """diffusers' StableDiffusionPipeline on torch (the reference backend)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        import torch
        from diffusers import StableDiffusionPipeline

        quiet_hf_libraries()
        path = Path(model)
        validate_pipeline_folder(path)
        check_dtype(dtype)
        device = resolve_device(device)
        check_folder_pickles(path)  # pickled weights (any name): torch's weights_only check, one line
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                path,
                dtype=getattr(torch, dtype),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                local_files_only=True,
            )
        except Exception as exc:  # diffusers, transformers and torch raise many types on a bad folder
            reason = unpickling_reason(exc) if "weights_only" in str(exc) else first_line(exc)
            raise BadInputError(
                f"{path}: could not load the diffusers pipeline ({type(exc).__name__}: {reason})"
            ) from None
        self._setup(pipe, path=path, device=device, dtype=dtype, batch_size=batch_size, note=None)

    @classmethod
    def from_pipeline(
        cls, pipe, *, path: Path, device: str, dtype: str, batch_size: int, note: str
    ) -> TorchGenerator:
        """Around a pipeline assembled elsewhere (a single-file checkpoint, a LoRA on a base)."""
        self = cls.__new__(cls)
        self._setup(pipe, path=path, device=device, dtype=dtype, batch_size=batch_size, note=note)
        return self

    def _setup(self, pipe, *, path: Path, device: str, dtype: str, batch_size: int, note: str | None) -> None:
        if batch_size < 1:
            raise BadInputError(f"batch size {batch_size}: expected at least 1")
        self.path = path
        self.device = device
        self.dtype = dtype
        self.batch_size = batch_size
        self.note = note
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(device)
        self._base_scheduler_config = dict(pipe.scheduler.config)

    def describe(self) -> BackendInfo:
        import torch

        return BackendInfo(
            backend="torch",
            device=self.device if self.device == "cpu" else torch.cuda.get_device_name(self.device),
            dtype=self.dtype,
            versions=library_versions(),
            note=self.note,
        )

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        import torch

        check_pairs(prompts, seeds)
        self.pipe.scheduler = make_scheduler(settings.scheduler, self._base_scheduler_config)
        out = []
        for part in chunks(len(prompts), self.batch_size):
            batch_prompts = list(prompts[part])
            generators = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[part]]
            with torch.inference_mode():
                result = self.pipe(
                    batch_prompts,
                    negative_prompt=[settings.negative_prompt] * len(batch_prompts)
                    if settings.guidance_scale > 1.0
                    else None,
                    num_inference_steps=settings.steps,
                    guidance_scale=settings.guidance_scale,
                    height=settings.height,
                    width=settings.width,
                    eta=settings.eta,
                    generator=generators,
                    output_type="np",
                )
            out.append(quantize(result.images))
        if not out:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        return np.concatenate(out)

"""One interface for regenerating images from (prompt, seed) pairs.

Every audit step that touches a model goes through `Generator.generate`, with numpy at
the boundary, so the torch backend here, the ONNX/TensorRT engines of `export` and a
black-box HTTP suspect are interchangeable and a report can name which one ran.

Seeds always seed a *CPU* torch.Generator per image: the initial latent noise for a seed
is then the same on any device and independent of its position in a batch, which is
what makes a key (prompt, seed) meaningful across machines.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from auditor.config import FrozenModel, GenerationSettings
from auditor.errors import BadInputError
from auditor.images import quantize


class BackendInfo(FrozenModel):
    """What produced the pixels: enough to rerun on the same stack."""

    backend: str
    device: str
    dtype: str
    versions: dict[str, str]
    note: str | None = None  # e.g. why an engine bundle fell back to torch


@runtime_checkable
class Generator(Protocol):
    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        """Return uint8 images (N, H, W, 3), one per (prompt, seed) pair."""
        ...

    def describe(self) -> BackendInfo: ...


def chunks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _check_pairs(prompts: Sequence[str], seeds: Sequence[int]) -> None:
    if len(prompts) != len(seeds):
        raise ValueError(f"{len(prompts)} prompts but {len(seeds)} seeds")
    for seed in seeds:
        if not 0 <= int(seed) < 2**63:
            raise BadInputError(f"seed {seed}: expected an integer in [0, 2**63)")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BadInputError(f"device {device!r}: no CUDA device is available on this host (use --device cpu)")
    return device


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


def quiet_hf_libraries() -> None:
    """diffusers/transformers draw tqdm bars on stderr while loading and saving; our own
    progress and our one-line errors are the only things the CLI may print there."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


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
    """diffusers' StableDiffusionPipeline on torch: the reference backend.

    Loads any Stable Diffusion folder in diffusers format (the tiny zoo, SD 1.5, SD 2.1)
    from local files only; nothing is downloaded.
    """

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
        self.path = Path(model)
        validate_pipeline_folder(self.path)
        self.device = resolve_device(device)
        if dtype not in ("float32", "float16", "bfloat16"):
            raise BadInputError(f"dtype {dtype!r}: expected float32, float16 or bfloat16")
        self.dtype = dtype
        self.batch_size = batch_size
        try:
            pipe = StableDiffusionPipeline.from_pretrained(
                self.path,
                dtype=getattr(torch, dtype),
                safety_checker=None,
                feature_extractor=None,
                requires_safety_checker=False,
                local_files_only=True,
            )
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BadInputError(f"{self.path}: could not load the diffusers pipeline ({first})") from None
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe.to(self.device)
        self._base_scheduler_config = dict(pipe.scheduler.config)

    def describe(self) -> BackendInfo:
        import diffusers
        import torch
        import transformers

        return BackendInfo(
            backend="torch",
            device=self.device if self.device == "cpu" else torch.cuda.get_device_name(self.device),
            dtype=self.dtype,
            versions={
                "torch": torch.__version__,
                "diffusers": diffusers.__version__,
                "transformers": transformers.__version__,
            },
        )

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        import torch

        _check_pairs(prompts, seeds)
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


BACKENDS = ("torch", "onnx", "tensorrt")


def load_generator(model: str | os.PathLike[str], *, backend: str = "torch", **kwargs) -> Generator:
    """Open a suspect or source model with the named backend.

    Engine backends live in the `export` package (they need its bundle format); they
    fall back to torch themselves, recording why, when a bundle cannot be used.
    """
    if str(model).startswith(("http://", "https://")) or Path(model).is_file():
        from auditor.suspects import open_suspect

        return open_suspect(str(model), backend=backend, **kwargs)
    if backend == "torch":
        return TorchGenerator(model, **kwargs)
    if backend in ("onnx", "tensorrt"):
        from export.generators import load_engine_generator

        return load_engine_generator(model, backend=backend, **kwargs)
    raise BadInputError(f"backend {backend!r}: expected one of {list(BACKENDS)}")

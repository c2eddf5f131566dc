"""The torch backend: a diffusers Stable Diffusion pipeline, the reference every other backend matches.

Loads a Stable Diffusion folder in diffusers format (the tiny zoo, SD 1.5, SD 2.1, SDXL base)
from local files only; nothing is downloaded. The pipeline class is the one the folder's
model_index.json names (`_pipelines.read_pipeline`): StableDiffusionPipeline or
StableDiffusionXLPipeline. SDXL gets its size conditioning from the settings
(`GenerationSettings.size_conditioning`) and never the invisible watermark diffusers adds when
the `invisible-watermark` package is installed (it would change pixels from host to host).
Single-file checkpoints and LoRA files end up here too, as a pipeline assembled elsewhere
(`TorchGenerator.from_pipeline`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Sequence
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
from auditor.backends._pipelines import SDXL_PIPELINE, read_pipeline
from auditor.config import GenerationSettings
from auditor.errors import BadInputError, TransientError, first_line
from auditor.images import quantize
from auditor.weights import check_folder_pickles, unpickling_reason

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


_INDEXED_BY_TIMESTEP = ("ddim", "ddpm", "pndm")
_checked: dict[str, None] = {}  # settings and scheduler configs already dry-run in this process


def check_scheduler_settings(
    settings: GenerationSettings, scheduler_config: dict, where: str = "generation settings"
) -> None:
    """Refuse settings the model's scheduler cannot run, before any generation.

    Some fail only deep inside a generation: DDIM and DDPM with `steps_offset` 1 index past
    their training timesteps at `steps=1000` (IndexError), PNDM cannot run 1 to 3 steps. The
    scheduler alone is cheap, so it is run dry: `set_timesteps`, every timestep inside
    [0, num_train_timesteps) for the schedulers that index by it, and each `step` on a 1x1
    latent. Cached per process.
    """
    import json
    import warnings

    import torch

    token = json.dumps(
        [settings.scheduler, settings.steps, settings.eta, scheduler_config], sort_keys=True, default=str
    )
    if token in _checked:
        return
    name, steps = settings.scheduler, settings.steps
    quiet_hf_libraries()  # diffusers logs unknown config fields on stderr: one-line errors only
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            scheduler = make_scheduler(name, scheduler_config)
            scheduler.set_timesteps(steps)
            train = int(scheduler.config.num_train_timesteps)
            timesteps = scheduler.timesteps
            indexed = (
                name in _INDEXED_BY_TIMESTEP
            )  # these index alphas_cumprod[t]; sigma schedulers interpolate
            if indexed and len(timesteps) and (float(timesteps.max()) >= train or float(timesteps.min()) < 0):
                raise BadInputError(
                    f"{where}: steps {steps} with the {name} scheduler reach timestep {int(timesteps.max())}, "
                    f"outside this model's {train} training timesteps (steps_offset "
                    f"{scheduler.config.get('steps_offset', 0)}); use fewer steps"
                )
            params = set(inspect.signature(scheduler.step).parameters)
            extra = {"eta": settings.eta} if "eta" in params else {}
            if "generator" in params:
                extra["generator"] = torch.Generator("cpu").manual_seed(0)
            latent = torch.zeros(1, 1, 1, 1) * scheduler.init_noise_sigma
            for t in timesteps:
                model_input = scheduler.scale_model_input(latent, t)
                latent = scheduler.step(torch.zeros_like(model_input), t, latent, return_dict=False, **extra)[
                    0
                ]
    except BadInputError:
        raise
    except Exception as exc:  # the scheduler's own refusal, or the crash a generation would meet
        raise BadInputError(
            f"{where}: steps {steps} with the {name} scheduler cannot run on this model's scheduler "
            f"({type(exc).__name__}: {first_line(exc, 120)}); try other steps or another scheduler"
        ) from None
    _checked[token] = None


def check_folder_settings(
    folder: str | os.PathLike[str], settings: GenerationSettings, where: str = ""
) -> None:
    """`check_scheduler_settings` against the scheduler config of a pipeline folder or engine bundle
    (FOLDER/scheduler/scheduler_config.json), without loading any weights."""
    from auditor.documents import parse_json, read_bytes

    path = Path(folder) / "scheduler" / "scheduler_config.json"
    config = parse_json(read_bytes(path, "scheduler config", 1 << 20), str(path))
    if not isinstance(config, dict):
        raise BadInputError(f"{path}: expected a JSON object (a diffusers scheduler config)")
    check_scheduler_settings(settings, config, where or f"{Path(folder).name}: generation settings")


def check_spec_settings(spec, settings: GenerationSettings) -> None:
    """Refuse `settings` a SuspectSpec cannot run or carry: its kind's `check_settings` (the public
    door is `auditor.backends.check_settings`; this name is kept for its earlier callers)."""
    spec.kind_object().check_settings(spec, settings)


class GenerationStopped(TransientError):
    """A generation ended early because its caller asked (`stop`): nothing wrong with the input."""


class TorchGenerator:
    """diffusers' StableDiffusionPipeline or StableDiffusionXLPipeline on torch (the reference backend)."""

    def __init__(
        self,
        model: str | os.PathLike[str],
        *,
        device: str = "auto",
        dtype: str = "float32",
        batch_size: int = 16,
    ) -> None:
        import diffusers
        import torch

        quiet_hf_libraries()
        path = Path(model)
        info = read_pipeline(path)
        check_dtype(dtype)
        device = resolve_device(device)
        check_folder_pickles(path)  # pickled weights (any name): torch's weights_only check, one line
        try:
            pipe = getattr(diffusers, info.pipeline).from_pretrained(
                path, dtype=getattr(torch, dtype), local_files_only=True, **pipeline_kwargs(info.pipeline)
            )
        except Exception as exc:  # diffusers, transformers and torch raise many types on a bad folder
            reason = unpickling_reason(exc) if "weights_only" in str(exc) else first_line(exc)
            raise BadInputError(
                f"{path}: could not load the diffusers pipeline ({type(exc).__name__}: {reason})"
            ) from None
        self._setup(pipe, path=path, device=device, dtype=dtype, batch_size=batch_size, note=None)

    @classmethod
    def from_pipeline(
        cls, pipe, *, path: Path, device: str, dtype: str, batch_size: int, note: str | None = None
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
        self.xl = type(pipe).__name__ == SDXL_PIPELINE
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

    def check_settings(self, settings: GenerationSettings) -> None:
        """Refuse settings this model's scheduler cannot run (`check_scheduler_settings`)."""
        check_scheduler_settings(
            settings, self._base_scheduler_config, f"{self.path.name}: generation settings"
        )

    def native_size(self) -> tuple[int, int]:
        """(height, width) the model generates when none is asked for: its UNet's sample size in pixels."""
        sample = self.pipe.unet.config.sample_size
        height, width = (sample, sample) if isinstance(sample, int) else tuple(sample)
        scale = int(getattr(self.pipe, "vae_scale_factor", 8))
        return int(height) * scale, int(width) * scale

    def generate(
        self,
        prompts: Sequence[str],
        seeds: Sequence[int],
        settings: GenerationSettings,
        *,
        stop: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """uint8 images; `stop` (checked after every denoising step) ends the generation early
        with GenerationStopped, e.g. when `serve` gives up on a request."""
        import torch

        check_pairs(prompts, seeds)
        self.check_settings(settings)  # before any work: a late IndexError deep in the scheduler is no answer
        self.pipe.scheduler = make_scheduler(settings.scheduler, self._base_scheduler_config)

        def on_step_end(pipe, step, timestep, tensors):
            if stop is not None and stop():
                raise GenerationStopped(f"generation stopped after {step + 1} of {settings.steps} steps")
            return tensors

        out = []
        for part in chunks(len(prompts), self.batch_size):
            if stop is not None and stop():
                raise GenerationStopped("generation stopped before it started")
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
                    callback_on_step_end=on_step_end if stop is not None else None,
                    **self._conditioning(settings),
                )
            out.append(quantize(result.images))
        if not out:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        return np.concatenate(out)

    def _conditioning(self, settings: GenerationSettings) -> dict:
        """SDXL's size conditioning, spelled out (SD pipelines take none)."""
        if not self.xl:
            return {}
        scale = self.pipe.vae_scale_factor
        height = settings.height or self.pipe.default_sample_size * scale
        width = settings.width or self.pipe.default_sample_size * scale
        original, crop, target = settings.size_conditioning(height, width)
        return {"original_size": original, "crops_coords_top_left": crop, "target_size": target}


def pipeline_kwargs(pipeline: str) -> dict:
    """What every load of `pipeline` is given: no safety checker (SD), no invisible watermark (SDXL)."""
    if pipeline == SDXL_PIPELINE:
        return {"add_watermarker": False}
    return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

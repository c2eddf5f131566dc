"""The one denoising loop of the torch-free backends (ONNX Runtime, TensorRT), and their common base.

It mirrors diffusers' StableDiffusionPipeline.__call__ (and StableDiffusionXLPipeline's)
step for step, so a key regenerated through an engine matches the torch backend to float
rounding:

- prompts tokenized padded to the tokenizer's max length; with guidance > 1 the
  negative prompt (default "") is encoded too and its rows go first;
- initial latents per image from its own CPU `torch.Generator(seed)` through
  `randn_tensor((1, C, h, w))`, so a seed gives the same noise on any device and at
  any batch position, scaled by `scheduler.init_noise_sigma`;
- the scheduler built from the bundle's scheduler config exactly as TorchGenerator
  builds it (`auditor.backends._diffusers.make_scheduler`), `set_timesteps`,
  `scale_model_input`, CFG `uncond + g * (cond - uncond)`, `step(..., eta, generator)`;
- `latents / scaling_factor` decoded, `(image / 2 + 0.5).clamp(0, 1)`, NHWC float,
  quantized to uint8 with `auditor.images.quantize`.
- SDXL: each prompt tokenized by both tokenizers; both encoders' penultimate hidden
  states concatenated, the second's pooled `text_embeds`, and `time_ids` = original size
  + crop top-left + target size (`GenerationSettings.size_conditioning`), the negative
  rows' the same (diffusers' default), fed to the UNet beside the text states.

Non-finite outputs: every component output is checked for NaN/inf (a flag kept on the
device, read once per batch, so no step waits on the GPU). One NaN raises
`NonFiniteOutputError` (exit 2, not retried: it is deterministic), naming the
component and step, instead of letting `clamp` and quantization turn it into a black
image, which would read as "far from every key" and could clear an infringer. The
loop does not fall back to torch by itself: a report names one backend and dtype for
all its images, so switching midway would misdescribe it; the message says to rerun in
float32 or with the torch backend.

The backends differ only in the `ComponentRunners` they pass: callables on torch
tensors, on the runner's device, one per exported component (`run(spec, *tensors)`).
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np

from auditor.backends._base import check_pairs, chunks, quiet_hf_libraries
from auditor.backends._diffusers import check_scheduler_settings, make_scheduler
from auditor.backends.engines.components import TEXT_ENCODER, UNET, VAE_DECODER, ComponentSpec
from auditor.backends.engines.components_xl import SDXL_PIPELINE, XL_TEXT_ENCODER, XL_TEXT_ENCODER_2, XL_UNET
from auditor.config import GenerationSettings
from auditor.documents import parse_json, read_bytes
from auditor.errors import BadInputError, first_line
from auditor.images import quantize

if TYPE_CHECKING:
    import torch

    from auditor.backends.engines.bundle import Bundle


class NonFiniteOutputError(BadInputError):
    """A component produced NaN or inf: the images would be black (fp16 overflow, broken weights)."""


class FiniteWatch:
    """Flags on the runner's device, one per component output; read once, at the end of a batch."""

    def __init__(self) -> None:
        self.flags: list[tuple[str, int, object]] = []

    def check(self, name: str, step: int, tensor):
        import torch

        self.flags.append((name, step, torch.isfinite(tensor).all()))
        return tensor

    def raise_if_any(self, steps: int, where: str) -> None:
        import torch

        if not self.flags:
            return
        finite = torch.stack([flag.to("cpu") for _, _, flag in self.flags]).tolist()
        for (name, step, _), ok in zip(self.flags, finite, strict=True):
            if not ok:
                at = "" if step < 0 else f" at step {step + 1} of {steps}"
                raise NonFiniteOutputError(
                    f"{where}: the {name} output holds NaN or inf{at}, so the images would be black"
                    " (fp16 overflow or broken weights); rerun with --dtype float32 or --backend torch"
                )


class ComponentRunners(Protocol):
    """The exported components, as callables on torch tensors."""

    device: torch.device  # where the loop keeps latents (runners accept CPU or this device)
    max_images: int | None  # most images per call the components accept (TensorRT profiles)

    def run(self, spec: ComponentSpec, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Inputs in `spec.input_names` order -> every output, in `spec.output_names` order."""
        ...

    def encode_text(self, input_ids: torch.Tensor) -> torch.Tensor:
        """int32 (rows, text_length) -> float32 (rows, text_length, hidden)."""
        ...

    def predict_noise(
        self, sample: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor
    ) -> torch.Tensor:
        """float32 (rows, C, h, w), float32 (rows,), (rows, L, D) -> float32 (rows, C, h, w)."""
        ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """latents already divided by scaling_factor -> float32 (rows, 3, H, W) in about [-1, 1]."""
        ...


class SpecRunners:
    """ComponentRunners whose calls all go through one `run(spec, *tensors)`: the tensor names
    come from each component's spec, never spelled out by a runtime."""

    def run(self, spec: ComponentSpec, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
        raise NotImplementedError

    def _run(self, spec: ComponentSpec, *tensors: torch.Tensor) -> torch.Tensor:
        return self.run(spec, *tensors)[0]

    def encode_text(self, input_ids):
        return self._run(TEXT_ENCODER, input_ids)

    def predict_noise(self, sample, timestep, encoder_hidden_states):
        return self._run(UNET, sample, timestep, encoder_hidden_states)

    def decode(self, latents):
        return self._run(VAE_DECODER, latents)


@dataclass(frozen=True)
class PipelineSpec:
    height: int
    width: int
    latent_channels: int
    vae_scale_factor: int
    scaling_factor: float
    pipeline: str = "StableDiffusionPipeline"

    @property
    def xl(self) -> bool:
        return self.pipeline == SDXL_PIPELINE


def _step_kwargs(scheduler, generators, eta: float) -> dict:
    """StableDiffusionPipeline.prepare_extra_step_kwargs."""
    params = set(inspect.signature(scheduler.step).parameters)
    kwargs = {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "generator" in params:
        kwargs["generator"] = generators
    return kwargs


class DenoisingLoop:
    def __init__(
        self,
        runners: ComponentRunners,
        tokenizer,
        scheduler_config: dict,
        spec: PipelineSpec,
        tokenizer_2=None,
    ) -> None:
        self.runners = runners
        self.tokenizer = tokenizer
        self.tokenizer_2 = tokenizer_2
        if spec.xl and tokenizer_2 is None:
            raise BadInputError("an SDXL bundle needs its second tokenizer (tokenizer_2)")
        self.scheduler_config = dict(scheduler_config)
        self.spec = spec
        self.where = "engine backend"  # named in errors; the generator sets e.g. "onnx backend (fp16 graphs)"

    def check_size(self, settings: GenerationSettings) -> None:
        height = settings.height or self.spec.height
        width = settings.width or self.spec.width
        if (height, width) != (self.spec.height, self.spec.width):
            raise BadInputError(
                f"generation at {height}x{width}: this bundle was exported for {self.spec.height}x{self.spec.width};"
                " re-export with --height/--width or use the torch backend"
            )

    def _tokens(self, texts: list[str], tokenizer=None):
        import torch

        tokenizer = tokenizer or self.tokenizer
        ids = tokenizer(
            texts,
            padding="max_length",
            max_length=tokenizer.model_max_length,
            truncation=True,
            return_tensors="np",
        ).input_ids
        return torch.from_numpy(np.ascontiguousarray(ids, dtype=np.int32))

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings, batch_size: int
    ) -> np.ndarray:
        self.check_size(settings)
        check_scheduler_settings(settings, self.scheduler_config)  # before any engine runs
        if batch_size < 1:
            raise BadInputError(f"batch size {batch_size}: expected at least 1")
        if self.runners.max_images is not None:
            batch_size = min(batch_size, self.runners.max_images)
        scheduler = make_scheduler(settings.scheduler, self.scheduler_config)
        out = [
            self._batch(list(prompts[part]), [int(s) for s in seeds[part]], settings, scheduler)
            for part in chunks(len(prompts), batch_size)
        ]
        if not out:
            return np.zeros((0, 0, 0, 3), dtype=np.uint8)
        return np.concatenate(out)

    def _batch(
        self, prompts: list[str], seeds: list[int], settings: GenerationSettings, scheduler
    ) -> np.ndarray:
        import torch
        from diffusers.utils.torch_utils import randn_tensor

        device = self.runners.device
        spec = self.spec
        guided = settings.guidance_scale > 1.0
        watch = FiniteWatch()
        with torch.inference_mode():
            texts = ([settings.negative_prompt] * len(prompts) if guided else []) + prompts  # negatives first
            text_states, added = self._encode(texts, settings, watch)

            scheduler.set_timesteps(settings.steps, device=device)
            generators = [torch.Generator("cpu").manual_seed(seed) for seed in seeds]
            shape = (
                len(prompts),
                spec.latent_channels,
                spec.height // spec.vae_scale_factor,
                spec.width // spec.vae_scale_factor,
            )
            latents = randn_tensor(shape, generator=generators, device=device, dtype=torch.float32)
            latents = latents * scheduler.init_noise_sigma
            step_kwargs = _step_kwargs(scheduler, generators, settings.eta)

            for step, t in enumerate(scheduler.timesteps):
                model_input = torch.cat([latents] * 2) if guided else latents
                model_input = scheduler.scale_model_input(model_input, t)
                timestep = t.to(device=device, dtype=torch.float32).reshape(1).expand(model_input.shape[0])
                if added is None:
                    noise = self.runners.predict_noise(model_input, timestep.contiguous(), text_states)
                else:
                    noise = self.runners.run(
                        XL_UNET, model_input, timestep.contiguous(), text_states, *added
                    )[0]
                noise = watch.check("unet", step, noise.to(device=device, dtype=torch.float32))
                if guided:
                    uncond, cond = noise.chunk(2)
                    noise = uncond + settings.guidance_scale * (cond - uncond)
                latents = scheduler.step(noise, t, latents, **step_kwargs, return_dict=False)[0]

            image = self.runners.decode(latents / spec.scaling_factor).to(dtype=torch.float32)
            watch.check("vae_decoder", -1, image)
            watch.raise_if_any(len(scheduler.timesteps), self.where)
            image = (image / 2 + 0.5).clamp(0, 1)
            return quantize(image.cpu().permute(0, 2, 3, 1).float().numpy())

    def _encode(self, texts: list[str], settings: GenerationSettings, watch: FiniteWatch):
        """Text states for every row, and SDXL's added conditioning (text_embeds, time_ids) or None."""
        import torch

        device = self.runners.device
        if not self.spec.xl:
            states = self.runners.encode_text(self._tokens(texts)).to(device=device, dtype=torch.float32)
            return watch.check("text_encoder", -1, states), None
        (first,) = self.runners.run(XL_TEXT_ENCODER, self._tokens(texts))
        second, pooled = self.runners.run(XL_TEXT_ENCODER_2, self._tokens(texts, self.tokenizer_2))
        parts = [t.to(device=device, dtype=torch.float32) for t in (first, second, pooled)]
        for name, tensor in zip(("text_encoder", "text_encoder_2", "text_encoder_2"), parts, strict=True):
            watch.check(name, -1, tensor)
        height, width = settings.height or self.spec.height, settings.width or self.spec.width
        original, crop, target = settings.size_conditioning(height, width)
        time_ids = torch.tensor([[*original, *crop, *target]], dtype=torch.float32, device=device)
        return torch.cat(parts[:2], dim=-1), (parts[2], time_ids.expand(len(texts), -1).contiguous())


PRECISION_DTYPES = {"fp32": "float32", "fp16": "float16"}


def engine_precision(dtype: str) -> str:
    """The bundle graph precision that runs `dtype` (engine backends have no bfloat16 graphs)."""
    for precision, name in PRECISION_DTYPES.items():
        if dtype == name:
            return precision
    raise BadInputError(f"dtype {dtype!r}: engine backends run float32 or float16 graphs")


class EngineGenerator:
    """What the ONNX Runtime and TensorRT generators share: bundle, tokenizer, scheduler, loop."""

    backend = "engine"

    def __init__(self, bundle: Bundle, runners, batch_size: int) -> None:
        import diffusers
        import transformers

        quiet_hf_libraries()
        if batch_size < 1:
            raise BadInputError(f"batch size {batch_size}: expected at least 1")
        self.bundle = bundle
        self.batch_size = batch_size
        manifest = bundle.manifest
        try:
            tokenizer_cls = getattr(transformers, manifest.pipeline.tokenizer_class)
            tokenizer = tokenizer_cls.from_pretrained(bundle.path("tokenizer"))
            tokenizer_2 = None
            if manifest.pipeline.tokenizer_2_class:
                tokenizer_2_cls = getattr(transformers, manifest.pipeline.tokenizer_2_class)
                tokenizer_2 = tokenizer_2_cls.from_pretrained(bundle.path("tokenizer_2"))
            raw = parse_json(
                read_bytes(bundle.path("scheduler/scheduler_config.json"), "scheduler config"),
                "scheduler config",
            )
            scheduler = getattr(diffusers, str(raw.get("_class_name", manifest.pipeline.scheduler_class)))
            scheduler_config = dict(scheduler.from_config(raw).config)
        except (OSError, ValueError, AttributeError, TypeError, BadInputError) as exc:
            raise BadInputError(
                f"{bundle.root}: could not load the bundle's tokenizer or scheduler ({first_line(exc)})"
            ) from None
        shapes = manifest.shapes
        spec = PipelineSpec(
            height=shapes.height,
            width=shapes.width,
            latent_channels=shapes.latent_channels,
            vae_scale_factor=shapes.vae_scale_factor,
            scaling_factor=manifest.pipeline.scaling_factor,
            pipeline=manifest.pipeline.pipeline_class,
        )
        self.loop = DenoisingLoop(runners, tokenizer, scheduler_config, spec, tokenizer_2)
        precision = getattr(self, "precision", None) or engine_precision(getattr(self, "dtype", "float32"))
        self.loop.where = f"{bundle.root}: {self.backend} backend ({precision} graphs)"

    def generate(
        self, prompts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings
    ) -> np.ndarray:
        check_pairs(prompts, seeds)
        return self.loop.generate(prompts, seeds, settings, self.batch_size)

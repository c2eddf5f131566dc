"""The torch components of the diffusers Stable Diffusion folder being exported.

Loaded in fp32 from local files, checked to be a plain text-conditioned Stable Diffusion
pipeline (the UNet takes no extra conditioning, its channels match the VAE's latents),
and measured for the shapes the export fixes (resolution, text length).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from auditor.backends._base import quiet_hf_libraries
from auditor.backends._diffusers import validate_pipeline_folder
from auditor.backends.engines.components import SPECS, ExportShapes
from auditor.documents import parse_json, read_bytes
from auditor.errors import BadInputError, first_line
from export.errors import ExportError

SUPPORTED_PIPELINES = ("StableDiffusionPipeline",)


class SourcePipeline:
    """The torch components of a diffusers Stable Diffusion folder, loaded for export."""

    def __init__(self, model: Path) -> None:
        import diffusers
        import transformers

        validate_pipeline_folder(model)
        quiet_hf_libraries()
        self.path = model
        self.index = parse_json(
            read_bytes(model / "model_index.json", "model index"), f"{model}/model_index.json"
        )
        if not isinstance(self.index, dict):
            raise BadInputError(f"{model}/model_index.json: expected a JSON object")
        kind = self.index.get("_class_name")
        if kind not in SUPPORTED_PIPELINES:
            raise ExportError(
                f"{model}: pipeline {kind!r} is not exportable; expected one of {list(SUPPORTED_PIPELINES)}"
            )
        try:
            self.tokenizer_class = str(self.index["tokenizer"][1])
            encoder_class = str(self.index["text_encoder"][1])
            self.tokenizer = getattr(transformers, self.tokenizer_class).from_pretrained(model / "tokenizer")
            self.text_encoder = (
                getattr(transformers, encoder_class).from_pretrained(model / "text_encoder").eval()
            )
            self.unet = diffusers.UNet2DConditionModel.from_pretrained(model / "unet").eval()
            self.vae = diffusers.AutoencoderKL.from_pretrained(model / "vae").eval()
            config_path = model / "scheduler" / "scheduler_config.json"
            self.scheduler_config = parse_json(read_bytes(config_path, "scheduler config"), str(config_path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
            raise BadInputError(
                f"{model}: could not load the Stable Diffusion components ({first_line(exc)})"
            ) from None
        for module in (self.text_encoder, self.unet, self.vae):
            module.float()
        cfg = self.unet.config
        if (
            cfg.time_cond_proj_dim is not None
            or cfg.addition_embed_type is not None
            or cfg.class_embed_type is not None
        ):
            raise ExportError(
                f"{model}: UNet takes extra conditioning (timestep_cond / added_cond_kwargs / class labels);"
                " only plain text-conditioned Stable Diffusion UNets are exportable"
            )
        if cfg.in_channels != self.vae.config.latent_channels:
            raise ExportError(
                f"{model}: UNet in_channels {cfg.in_channels} != VAE latent channels {self.vae.config.latent_channels}"
                " (inpainting/depth UNets are not exportable)"
            )
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.upcast_attention = bool(getattr(cfg, "upcast_attention", False))

    def default_size(self) -> tuple[int, int]:
        """What StableDiffusionPipeline uses when height/width are None."""
        size = self.unet.config.sample_size
        h, w = (size, size) if isinstance(size, int) else (size[0], size[1])
        return h * self.vae_scale_factor, w * self.vae_scale_factor

    def shapes(self, height: int | None, width: int | None, batch_sizes: Sequence[int]) -> ExportShapes:
        dh, dw = self.default_size()
        height, width = height or dh, width or dw
        unit = self.vae_scale_factor * 2 ** (len(self.unet.config.down_block_types) - 1)
        for label, value in (("height", height), ("width", width)):
            if value % 8 or value % unit:
                raise BadInputError(
                    f"--{label} {value}: expected a multiple of 8 and of {unit} (VAE and UNet downsampling)"
                )
        text_length = int(self.tokenizer.model_max_length)
        if text_length > int(self.text_encoder.config.max_position_embeddings):
            raise ExportError(
                f"{self.path}: tokenizer max length {text_length} exceeds the text encoder's"
                f" {self.text_encoder.config.max_position_embeddings} positions"
            )
        return ExportShapes(
            height=height,
            width=width,
            vae_scale_factor=self.vae_scale_factor,
            latent_channels=int(self.unet.config.in_channels),
            text_length=text_length,
            text_hidden_size=int(self.text_encoder.config.hidden_size),
            vocab_size=int(self.text_encoder.config.vocab_size),
            batch_sizes=tuple(sorted(set(batch_sizes))),
        )

    def graphs(self) -> dict:
        """The torch module each component spec traces, wrapped by its spec."""
        return {name: spec.wrap(getattr(self, spec.source)) for name, spec in SPECS.items()}

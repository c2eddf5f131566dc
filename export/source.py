"""The torch components of the diffusers Stable Diffusion (or SDXL) folder being exported.

Loaded in fp32 from local files, checked to be a plain text-conditioned Stable Diffusion
pipeline (the UNet takes no extra conditioning, its channels match the VAE's latents) or
an SDXL base (the UNet takes exactly SDXL's `text_time` added conditioning: pooled text
embeddings and six size-conditioning numbers), and measured for the shapes the export
fixes (resolution, text length, the encoders' widths).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from auditor.backends import quiet_hf_libraries, read_pipeline
from auditor.backends.engines.components import ExportShapes
from auditor.backends.engines.components_xl import TIME_IDS, pipeline_specs
from auditor.documents import parse_json, read_bytes
from auditor.errors import BadInputError, first_line
from export.errors import ExportError


class SourcePipeline:
    """The torch components of a diffusers Stable Diffusion or SDXL folder, loaded for export."""

    def __init__(self, model: Path) -> None:
        import diffusers
        import transformers

        info = read_pipeline(model)  # an unsupported pipeline: one line naming model_index.json
        quiet_hf_libraries()
        self.path = model
        self.pipeline = info.pipeline
        self.xl = info.is_xl
        self.index = parse_json(
            read_bytes(model / "model_index.json", "model index"), f"{model}/model_index.json"
        )
        self.tokenizer_2_class: str | None = None
        try:
            self.tokenizer_class = str(self.index["tokenizer"][1])
            encoder_class = str(self.index["text_encoder"][1])
            self.tokenizer = getattr(transformers, self.tokenizer_class).from_pretrained(model / "tokenizer")
            self.text_encoder = (
                getattr(transformers, encoder_class).from_pretrained(model / "text_encoder").eval()
            )
            if self.xl:
                self.tokenizer_2_class = str(self.index["tokenizer_2"][1])
                self.tokenizer_2 = getattr(transformers, self.tokenizer_2_class).from_pretrained(
                    model / "tokenizer_2"
                )
                encoder_2_class = str(self.index["text_encoder_2"][1])
                self.text_encoder_2 = (
                    getattr(transformers, encoder_2_class).from_pretrained(model / "text_encoder_2").eval()
                )
            self.unet = diffusers.UNet2DConditionModel.from_pretrained(model / "unet").eval()
            self.vae = diffusers.AutoencoderKL.from_pretrained(model / "vae").eval()
            config_path = model / "scheduler" / "scheduler_config.json"
            self.scheduler_config = parse_json(read_bytes(config_path, "scheduler config"), str(config_path))
        except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, RuntimeError) as exc:
            raise BadInputError(
                f"{model}: could not load the {self.pipeline} components ({first_line(exc)})"
            ) from None
        for module in self._modules():
            module.float()
        self._check_unet()
        self.vae_scale_factor = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.scaling_factor = float(self.vae.config.scaling_factor)
        self.upcast_attention = bool(getattr(self.unet.config, "upcast_attention", False))

    def _modules(self) -> list:
        return [self.text_encoder, *([self.text_encoder_2] if self.xl else []), self.unet, self.vae]

    def _check_unet(self) -> None:
        model, cfg = self.path, self.unet.config
        if cfg.time_cond_proj_dim is not None or cfg.class_embed_type is not None:
            raise ExportError(
                f"{model}: UNet takes extra conditioning (timestep_cond / class labels);"
                " only text-conditioned Stable Diffusion and SDXL UNets are exportable"
            )
        if self.xl:
            width = self.text_encoder.config.hidden_size + self.text_encoder_2.config.hidden_size
            pooled = int(self.text_encoder_2.config.projection_dim)
            expected = TIME_IDS * int(cfg.addition_time_embed_dim or 0) + pooled
            if (
                cfg.addition_embed_type != "text_time"
                or cfg.projection_class_embeddings_input_dim != expected
            ):
                raise ExportError(
                    f"{model}/unet/config.json: an SDXL UNet takes addition_embed_type 'text_time' with"
                    f" {expected} inputs (6 time ids x {cfg.addition_time_embed_dim} + pooled {pooled}), not"
                    f" {cfg.addition_embed_type!r} with {cfg.projection_class_embeddings_input_dim}"
                )
            if cfg.cross_attention_dim != width:
                raise ExportError(
                    f"{model}: UNet cross_attention_dim {cfg.cross_attention_dim} != the two text encoders'"
                    f" widths together ({width})"
                )
        elif cfg.addition_embed_type is not None:
            raise ExportError(
                f"{model}: UNet takes extra conditioning (added_cond_kwargs {cfg.addition_embed_type!r}) in a"
                f" {self.pipeline}; only plain text-conditioned Stable Diffusion UNets are exportable as one"
            )
        if cfg.in_channels != self.vae.config.latent_channels:
            raise ExportError(
                f"{model}: UNet in_channels {cfg.in_channels} != VAE latent channels {self.vae.config.latent_channels}"
                " (inpainting/depth UNets are not exportable)"
            )

    def default_size(self) -> tuple[int, int]:
        """What the pipeline uses when height/width are None."""
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
        encoders = [(self.tokenizer, self.text_encoder)]
        if self.xl:
            encoders.append((self.tokenizer_2, self.text_encoder_2))
        for tokenizer, encoder in encoders:
            if int(tokenizer.model_max_length) != text_length:
                raise ExportError(
                    f"{self.path}: the tokenizers pad to {text_length} and {tokenizer.model_max_length} tokens;"
                    " expected one text length"
                )
            if text_length > int(encoder.config.max_position_embeddings):
                raise ExportError(
                    f"{self.path}: tokenizer max length {text_length} exceeds the text encoder's"
                    f" {encoder.config.max_position_embeddings} positions"
                )
        return ExportShapes(
            height=height,
            width=width,
            vae_scale_factor=self.vae_scale_factor,
            latent_channels=int(self.unet.config.in_channels),
            text_length=text_length,
            text_hidden_size=int(self.text_encoder.config.hidden_size),
            vocab_size=min(int(encoder.config.vocab_size) for _, encoder in encoders),
            batch_sizes=tuple(sorted(set(batch_sizes))),
            text_hidden_size_2=int(self.text_encoder_2.config.hidden_size) if self.xl else None,
            pooled_size=int(self.text_encoder_2.config.projection_dim) if self.xl else None,
        )

    def specs(self) -> dict:
        """The component specs this pipeline exports (SD: three, SDXL: four), in export order."""
        return pipeline_specs(self.pipeline)

    def graphs(self) -> dict:
        """The torch module each component spec traces, wrapped by its spec."""
        return {name: spec.wrap(getattr(self, spec.source)) for name, spec in self.specs().items()}

"""SDXL's exported components, and which set of components each supported pipeline exports.

A StableDiffusionXLPipeline (the base; no refiner) exports four graphs, each a `ComponentSpec`
with its contract, tolerance and parity check like SD's (components.py):

    text_encoder    CLIP ViT-L: input_ids -> penultimate hidden states (SDXL reads hidden_states[-2])
    text_encoder_2  OpenCLIP bigG with projection: input_ids -> penultimate hidden states, and the
                    pooled, projected `text_embeds`
    unet            sample, timestep, encoder_hidden_states (both encoders' states concatenated),
                    text_embeds, time_ids (original size, crop top-left, target size) -> noise
    vae_decoder     as SD's, but kept fp32 in the fp16 graph set (`keep_fp32_in_half`): SDXL's VAE
                    overflows in fp16 (black images; the reason `force_upcast` exists), so an fp16
                    bundle runs the fp32 VAE graph, as diffusers' SDXL pipeline upcasts its VAE

In the fp16 UNet graph the timestep and the size conditioning (`time_ids`, sinusoidally
embedded like timesteps) stay float32, and so does `text_embeds`, which the UNet
concatenates with the time_ids embedding before its own cast.
"""

from __future__ import annotations

from auditor.backends._pipelines import SD_PIPELINE, SDXL_PIPELINE
from auditor.backends.engines.components import (
    BATCH_AXIS,
    SPECS,
    ComponentSpec,
    TensorSpec,
    TextEncoderSpec,
    UNetSpec,
    VaeDecoderSpec,
)

TIME_IDS = 6  # original (h, w), crop (top, left), target (h, w)


class XLTextEncoderSpec(TextEncoderSpec):
    name = "text_encoder"
    description = (
        "SDXL's first CLIP text encoder: token ids (padded to max length) -> penultimate hidden states"
    )
    output_names = ("penultimate_hidden_state",)

    def tensors(self, shapes):
        inputs, _ = super().tensors(shapes)
        width = shapes.text_hidden_size
        return inputs, (
            TensorSpec(name=self.output, dtype="float32", shape=(BATCH_AXIS, shapes.text_length, width)),
        )

    def wrap(self, module):
        import torch

        class PenultimateGraph(torch.nn.Module):
            def __init__(self, text_encoder) -> None:
                super().__init__()
                self.text_encoder = text_encoder

            def forward(self, input_ids):
                return self.text_encoder(
                    input_ids, output_hidden_states=True, return_dict=True
                ).hidden_states[-2]

        return PenultimateGraph(module).eval()


class XLTextEncoder2Spec(TextEncoderSpec):
    name = "text_encoder_2"
    description = "SDXL's second text encoder (with projection): token ids -> penultimate hidden states, pooled text_embeds"
    source = "text_encoder_2"
    output_names = ("penultimate_hidden_state", "text_embeds")

    def tensors(self, shapes):
        b, length = BATCH_AXIS, shapes.text_length
        return (
            (TensorSpec(name="input_ids", dtype="int32", shape=(b, length)),),
            (
                TensorSpec(
                    name="penultimate_hidden_state",
                    dtype="float32",
                    shape=(b, length, shapes.text_hidden_size_2),
                ),
                TensorSpec(name="text_embeds", dtype="float32", shape=(b, shapes.pooled_size)),
            ),
        )

    def wrap(self, module):
        import torch

        class PooledGraph(torch.nn.Module):
            def __init__(self, text_encoder) -> None:
                super().__init__()
                self.text_encoder = text_encoder

            def forward(self, input_ids):
                out = self.text_encoder(input_ids, output_hidden_states=True, return_dict=True)
                return out.hidden_states[-2], out.text_embeds

        return PooledGraph(module).eval()


class XLUNetSpec(UNetSpec):
    name = "unet"
    description = (
        "SDXL UNet: scaled latents, timestep per row, text states of both encoders, pooled text_embeds and"
        " time_ids (original size, crop, target size) -> noise"
    )
    input_names = ("sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids")
    fp32_inputs = ("timestep", "text_embeds", "time_ids")

    def tensors(self, shapes):
        (sample, timestep, _), outputs = super().tensors(shapes)
        b = BATCH_AXIS
        width = shapes.text_hidden_size + (shapes.text_hidden_size_2 or 0)
        return (
            (
                sample,
                timestep,
                TensorSpec(
                    name="encoder_hidden_states", dtype="float32", shape=(b, shapes.text_length, width)
                ),
                TensorSpec(name="text_embeds", dtype="float32", shape=(b, shapes.pooled_size)),
                TensorSpec(name="time_ids", dtype="float32", shape=(b, TIME_IDS)),
            ),
            outputs,
        )

    def wrap(self, module):
        import torch

        class XLUNetGraph(torch.nn.Module):
            def __init__(self, unet) -> None:
                super().__init__()
                self.unet = unet

            def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
                added = {"text_embeds": text_embeds, "time_ids": time_ids}
                return self.unet(
                    sample,
                    timestep,
                    encoder_hidden_states=encoder_hidden_states,
                    added_cond_kwargs=added,
                    return_dict=False,
                )[0]

        return XLUNetGraph(module).eval()

    def sample(self, spec, shape, rng, shapes, scaling):
        if spec.name == "time_ids":  # sizes around the exported one, crops up to half of it
            h, w = shapes.height, shapes.width
            high = [2 * h, 2 * w, h // 2 + 1, w // 2 + 1, 2 * h, 2 * w]
            return rng.integers(0, high, size=shape).astype(spec.numpy_dtype)
        return super().sample(spec, shape, rng, shapes, scaling)


class XLVaeDecoderSpec(VaeDecoderSpec):
    keep_fp32_in_half = True


XL_TEXT_ENCODER, XL_TEXT_ENCODER_2 = XLTextEncoderSpec(), XLTextEncoder2Spec()
XL_UNET, XL_VAE_DECODER = XLUNetSpec(), XLVaeDecoderSpec()
XL_SPECS: dict[str, ComponentSpec] = {
    spec.name: spec for spec in (XL_TEXT_ENCODER, XL_TEXT_ENCODER_2, XL_UNET, XL_VAE_DECODER)
}
PIPELINE_SPECS: dict[str, dict[str, ComponentSpec]] = {SD_PIPELINE: SPECS, SDXL_PIPELINE: XL_SPECS}


def pipeline_specs(pipeline: str) -> dict[str, ComponentSpec]:
    """The components a pipeline class exports, in export order (KeyError for any other pipeline)."""
    return PIPELINE_SPECS[pipeline]

"""The exported components, one spec each, and the contract every exported graph is held to.

Modelled on optimum's ONNX exporters (an OnnxConfig per model): each component (CLIP
text encoder, UNet, VAE decoder) is one `ComponentSpec` that holds everything about it:
its input and output tensors (the names the ONNX Runtime and TensorRT runners and the
benchmarks read), which axes are dynamic, the torch wrapper the exporter traces, the
seeded sample inputs validation feeds it, and its fp16 rules. `spec.contract(shapes)`
is the part written into the bundle manifest (tensors, TensorRT shape profiles for the
requested batch sizes, the tolerance against torch), so a consumer never has to guess
a shape.

Shapes: the batch axis is the only dynamic axis; resolution and text length are fixed
at export (one bundle = one resolution), which lets ONNX Runtime and TensorRT plan
memory and pick kernels for the real sizes.

These are a StableDiffusionPipeline's (`SPECS`); SDXL's four components, and which set a
pipeline exports (`pipeline_specs`), are in `components_xl`. The fp16 rules live in `half`.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from auditor.backends.engines.half import (
    AttentionRule,
    fusable_attention,
    keep_norms_fp32,
    register_fp32_softmax_attention,
)
from auditor.config import FrozenModel

ComponentName = Literal["text_encoder", "text_encoder_2", "unet", "vae_decoder"]
COMPONENTS: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")  # a StableDiffusionPipeline's
Precision = Literal["fp32", "fp16"]
TensorDType = Literal["float32", "float16", "int32", "int64"]

DEFAULT_OPSET = 17
# 14 is the first opset with the ops scaled-dot-product attention lowers to; 20 is the
# newest the TorchScript exporter (`dynamo=False`) writes.
SUPPORTED_OPSETS = range(14, 21)
BATCH_AXIS = "batch"


class Tolerance(FrozenModel):
    """Pass when max|onnx - torch| <= atol + rtol * max|torch| over the whole output."""

    atol: float = Field(ge=0.0)
    rtol: float = Field(ge=0.0)

    def bound(self, reference_max_abs: float) -> float:
        return self.atol + self.rtol * reference_max_abs


# fp32 graphs agree with torch to ~1e-6 on the tiny zoo and ~1e-4 on SD 1.5 (fused
# attention and GEMM reorderings); fp16 engines are held to a looser bound.
DEFAULT_TOLERANCES: dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-4, rtol=1e-3),
    "fp16": Tolerance(atol=2e-2, rtol=2e-2),
}


class TensorSpec(FrozenModel):
    """One graph input or output; a str in `shape` names a dynamic axis."""

    name: str = Field(min_length=1)
    dtype: TensorDType
    shape: tuple[int | str, ...]

    def concrete(self, batch: int) -> tuple[int, ...]:
        return tuple(batch if axis == BATCH_AXIS else int(axis) for axis in self.shape)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)


class ShapeProfile(FrozenModel):
    """A TensorRT optimization profile: min/opt/max shape of every input.

    One static profile per requested image batch size b: min = opt = max = b * rows per
    image (classifier-free guidance runs the unconditional and conditional rows together),
    so TensorRT tunes every kernel for the one shape it runs and a CUDA graph can replay it.
    A call with fewer rows takes the smallest profile that holds them, padded (trt.py).
    Bundles exported before this rule hold range profiles (min 1 row); engines of those
    still run, without CUDA graphs.
    """

    image_batch: int = Field(ge=1)
    min: dict[str, tuple[int, ...]]
    opt: dict[str, tuple[int, ...]]
    max: dict[str, tuple[int, ...]]

    def max_rows(self, name: str) -> int:
        return self.max[name][0]


class ComponentContract(FrozenModel):
    component: ComponentName
    description: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    # rows per image in one call: 2 for the text encoder and UNet (CFG), 1 for the VAE
    rows_per_image: int = Field(ge=1)
    profiles: tuple[ShapeProfile, ...] = Field(min_length=1)
    tolerance: Tolerance

    @property
    def input_names(self) -> list[str]:
        return [spec.name for spec in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [spec.name for spec in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """`torch.onnx.export(dynamic_axes=...)` for this contract."""
        return {
            spec.name: {i: axis for i, axis in enumerate(spec.shape) if isinstance(axis, str)}
            for spec in (*self.inputs, *self.outputs)
            if any(isinstance(axis, str) for axis in spec.shape)
        }


class ExportShapes(FrozenModel):
    """The sizes fixed at export: one bundle serves exactly one resolution."""

    height: int = Field(ge=8)
    width: int = Field(ge=8)
    vae_scale_factor: int = Field(ge=1)
    latent_channels: int = Field(ge=1)
    text_length: int = Field(ge=1)
    text_hidden_size: int = Field(ge=1)
    vocab_size: int = Field(ge=1)
    batch_sizes: tuple[int, ...] = Field(min_length=1)
    # SDXL: the second text encoder's width and its pooled (projected) embedding's size
    text_hidden_size_2: int | None = Field(None, ge=1)
    pooled_size: int | None = Field(None, ge=1)

    @property
    def latent_height(self) -> int:
        return self.height // self.vae_scale_factor

    @property
    def latent_width(self) -> int:
        return self.width // self.vae_scale_factor


def _profiles(
    inputs: tuple[TensorSpec, ...], batch_sizes: tuple[int, ...], rows: int
) -> tuple[ShapeProfile, ...]:
    out = []
    for b in sorted(set(batch_sizes)):
        shapes = {spec.name: spec.concrete(b * rows) for spec in inputs}
        out.append(ShapeProfile(image_batch=b, min=shapes, opt=shapes, max=shapes))
    return tuple(out)


class ParityRecord(FrozenModel):
    """How far an exported component is from torch on seeded random inputs."""

    runtime: str  # what ran the graph: "onnxruntime CPUExecutionProvider (extended)", "tensorrt fp16", ...
    batch: int
    seed: int
    # None: the output held NaN/inf or had the wrong shape (JSON has no infinity)
    max_abs_error: float | None
    max_rel_error: float | None  # max_abs_error / max|torch output|
    reference_max_abs: float
    tolerance: Tolerance
    passed: bool

    def summary(self) -> str:
        if self.max_abs_error is None:
            return f"{self.runtime}: non-finite or misshapen output"
        return (
            f"{self.runtime}: max abs error {self.max_abs_error:.3g}"
            f" (bound {self.tolerance.bound(self.reference_max_abs):.3g}), max rel error {self.max_rel_error:.3g}"
        )


def compare(
    outputs: dict[str, np.ndarray],
    references: dict[str, np.ndarray],
    tolerance: Tolerance,
    runtime: str,
    seed: int,
) -> ParityRecord:
    """Max abs and rel error of `outputs` against torch's `references`, and the verdict."""
    max_abs: float | None = 0.0
    ref_max, batch = 0.0, 0
    for name, ref in references.items():
        ref64 = np.asarray(ref, dtype=np.float64)
        got = np.asarray(outputs[name], dtype=np.float64)
        ref_max = max(ref_max, float(np.max(np.abs(ref64))) if ref64.size else 0.0)
        batch = int(ref64.shape[0]) if ref64.ndim else 0
        if got.shape != ref64.shape or not np.all(np.isfinite(got)):
            max_abs = None
            continue
        if max_abs is not None and got.size:
            max_abs = max(max_abs, float(np.max(np.abs(got - ref64))))
    if max_abs is None:
        rel = None
    else:
        rel = max_abs / ref_max if ref_max > 0 else max_abs  # an all-zero reference: absolute
    return ParityRecord(
        runtime=runtime,
        batch=batch,
        seed=seed,
        max_abs_error=max_abs,
        max_rel_error=rel,
        reference_max_abs=ref_max,
        tolerance=tolerance,
        passed=max_abs is not None and max_abs <= tolerance.bound(ref_max),
    )


# ---------------------------------------------------------------- component specs


class ComponentSpec:
    """One exported component: its tensors, torch wrapper, sample inputs and fp16 rules."""

    name: ComponentName
    description: str
    source: str  # the pipeline attribute holding the torch module (text_encoder, unet, vae)
    rows_per_image: int  # rows per image in one call: 2 for text encoder and UNet (CFG), 1 for the VAE
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    fp32_inputs: tuple[str, ...] = ()  # float inputs the fp16 graph keeps in float32
    # True: the fp16 graph set runs this component's fp32 graph (SDXL's VAE overflows in fp16)
    keep_fp32_in_half: bool = False

    @property
    def output(self) -> str:
        return self.output_names[0]

    def tensors(self, shapes: ExportShapes) -> tuple[tuple[TensorSpec, ...], tuple[TensorSpec, ...]]:
        raise NotImplementedError

    def contract(self, shapes: ExportShapes, tolerance: Tolerance) -> ComponentContract:
        inputs, outputs = self.tensors(shapes)
        assert tuple(t.name for t in inputs) == self.input_names
        assert tuple(t.name for t in outputs) == self.output_names
        return ComponentContract(
            component=self.name,
            description=self.description,
            inputs=inputs,
            outputs=outputs,
            rows_per_image=self.rows_per_image,
            profiles=_profiles(inputs, shapes.batch_sizes, self.rows_per_image),
            tolerance=tolerance,
        )

    def wrap(self, module):
        """The torch module the exporter traces: positional tensors in, one tensor out."""
        raise NotImplementedError

    def sample(self, spec: TensorSpec, shape: tuple[int, ...], rng, shapes: ExportShapes, scaling: float):
        return rng.standard_normal(shape).astype(spec.numpy_dtype)

    def sample_inputs(
        self, contract: ComponentContract, shapes: ExportShapes, batch: int, seed: int, scaling_factor: float
    ) -> dict[str, np.ndarray]:
        """Seeded random inputs in the ranges the denoising loop feeds this component."""
        rng = np.random.default_rng([seed, _COMPONENT_INDEX[self.name]])
        return {
            spec.name: self.sample(spec, spec.concrete(batch), rng, shapes, scaling_factor)
            for spec in contract.inputs
        }

    def half(self, module, upcast_attention: bool = False):
        """An fp16 copy of a wrapped module, float32 at the contract's boundary (Casts in the graph).

        Mirrors StableDiffusionPipeline at torch_dtype=float16 (weights and activations fp16,
        `fp32_inputs` kept float32, token ids untouched) except where fp16 overflows: every
        GroupNorm and LayerNorm computes in fp32 (`keep_norms_fp32`: their mean and variance
        over thousands of fp16 activations are where SD's fp16 runs blow up), and attention
        follows the subclasses' `half_rules` (diffusers modules: scaled-dot-product attention in
        the pattern fused kernels match; text encoders: fp32 softmax). Convolutions and matrix
        products, where the time goes, stay fp16. The returned module's `attention` attribute
        names the attention rule (`HalfGraphRecord.attention` in the manifest).
        """
        import copy

        import torch

        class HalfPrecisionGraph(torch.nn.Module):
            def __init__(self, inner, cast: tuple[bool, ...], attention: AttentionRule | None) -> None:
                super().__init__()
                self.inner = inner
                self.cast = cast
                self.attention = attention

            def forward(self, *args):
                args = [a.half() if cast else a for a, cast in zip(args, self.cast, strict=True)]
                out = self.inner(*args)
                return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()

        inner = copy.deepcopy(module).half().eval()
        keep_norms_fp32(inner)
        attention = self.half_rules(inner, upcast_attention)
        dtypes = dict(zip(self.input_names, self.input_dtypes(), strict=True))
        cast = tuple(dtypes[n] == "float32" and n not in self.fp32_inputs for n in self.input_names)
        return HalfPrecisionGraph(inner, cast, attention).eval()

    def input_dtypes(self) -> tuple[str, ...]:
        return ("float32",) * len(self.input_names)

    def half_rules(self, inner, upcast_attention: bool) -> AttentionRule | None:
        """Component-specific changes to the fp16 copy (attention implementation and the like);
        returns the attention rule applied (None: the component has no attention)."""
        return None


class TextEncoderSpec(ComponentSpec):
    name = "text_encoder"
    description = "CLIP text encoder: token ids (padded to the tokenizer's max length) -> last_hidden_state"
    source = "text_encoder"
    rows_per_image = 2
    input_names = ("input_ids",)
    output_names = ("last_hidden_state",)

    def tensors(self, shapes):
        b, length = BATCH_AXIS, shapes.text_length
        return (
            (TensorSpec(name="input_ids", dtype="int32", shape=(b, length)),),
            (
                TensorSpec(
                    name="last_hidden_state", dtype="float32", shape=(b, length, shapes.text_hidden_size)
                ),
            ),
        )

    def input_dtypes(self):
        return ("int32",)

    def wrap(self, module):
        import torch

        class TextEncoderGraph(torch.nn.Module):
            def __init__(self, text_encoder) -> None:
                super().__init__()
                self.text_encoder = text_encoder

            def forward(self, input_ids):
                return self.text_encoder(input_ids, return_dict=False)[0]

        return TextEncoderGraph(module).eval()

    def sample(self, spec, shape, rng, shapes, scaling):
        return rng.integers(0, shapes.vocab_size, size=shape).astype(spec.numpy_dtype)

    def half_rules(self, inner, upcast_attention):
        # transformers' eager attention asks for softmax(..., dtype=float32), which the TorchScript
        # exporter writes as an fp16 Softmax followed by a Cast; its SDPA path traced in fp16 left
        # a float32 tensor feeding an fp16 LayerNormalization, a graph ONNX Runtime refuses to load
        # (transformers 5.23, torch 2.13). So: eager attention with the scores cast up first.
        # (77 tokens: its scores are 77 x 77, so no fused-attention pattern is worth its numerics here)
        inner.text_encoder.set_attn_implementation(register_fp32_softmax_attention())
        return "fp32-softmax"


class UNetSpec(ComponentSpec):
    name = "unet"
    description = "UNet noise prediction: scaled latents, timestep per row (float), text states -> noise"
    source = "unet"
    rows_per_image = 2
    input_names = ("sample", "timestep", "encoder_hidden_states")
    output_names = ("noise_pred",)
    # the UNet embeds timesteps in fp32, then casts; Euler's fractional timesteps would lose digits in fp16
    fp32_inputs = ("timestep",)

    def tensors(self, shapes):
        b, c, lh, lw = BATCH_AXIS, shapes.latent_channels, shapes.latent_height, shapes.latent_width
        return (
            (
                TensorSpec(name="sample", dtype="float32", shape=(b, c, lh, lw)),
                TensorSpec(name="timestep", dtype="float32", shape=(b,)),
                TensorSpec(
                    name="encoder_hidden_states",
                    dtype="float32",
                    shape=(b, shapes.text_length, shapes.text_hidden_size),
                ),
            ),
            (TensorSpec(name="noise_pred", dtype="float32", shape=(b, c, lh, lw)),),
        )

    def wrap(self, module):
        import torch

        class UNetGraph(torch.nn.Module):
            def __init__(self, unet) -> None:
                super().__init__()
                self.unet = unet

            def forward(self, sample, timestep, encoder_hidden_states):
                return self.unet(
                    sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False
                )[0]

        return UNetGraph(module).eval()

    def sample(self, spec, shape, rng, shapes, scaling):
        if spec.name == "timestep":
            return rng.integers(0, 1000, size=shape).astype(spec.numpy_dtype)
        return super().sample(spec, shape, rng, shapes, scaling)

    def half_rules(self, inner, upcast_attention):
        # scaled-dot-product attention in the pattern fused kernels match (Q and K scaled before
        # QK^T, no zero add); a UNet configured with upcast_attention (SD 2.x), whose QK^T
        # overflows fp16, runs that pattern on fp32 Q, K and V
        return fusable_attention(inner, upcast_attention)


class VaeDecoderSpec(ComponentSpec):
    name = "vae_decoder"
    description = "VAE decoder (post_quant_conv + decoder): latents already divided by scaling_factor -> image in [-1, 1]"
    source = "vae"
    rows_per_image = 1
    input_names = ("latent_sample",)
    output_names = ("sample",)

    def tensors(self, shapes):
        b, c, lh, lw = BATCH_AXIS, shapes.latent_channels, shapes.latent_height, shapes.latent_width
        return (
            (TensorSpec(name="latent_sample", dtype="float32", shape=(b, c, lh, lw)),),
            (TensorSpec(name="sample", dtype="float32", shape=(b, 3, shapes.height, shapes.width)),),
        )

    def wrap(self, module):
        import torch

        class VaeDecoderGraph(torch.nn.Module):
            def __init__(self, vae) -> None:
                super().__init__()
                self.vae = vae

            def forward(self, latent_sample):
                return self.vae.decode(latent_sample, return_dict=False)[0]

        return VaeDecoderGraph(module).eval()

    def sample(self, spec, shape, rng, shapes, scaling):
        return (rng.standard_normal(shape) / scaling).astype(spec.numpy_dtype)

    def half_rules(self, inner, upcast_attention):
        return fusable_attention(inner)  # the mid block's self-attention


TEXT_ENCODER, UNET, VAE_DECODER = TextEncoderSpec(), UNetSpec(), VaeDecoderSpec()
SPECS: dict[str, ComponentSpec] = {spec.name: spec for spec in (TEXT_ENCODER, UNET, VAE_DECODER)}
# seeds the sample inputs of each component: fixed per name, so SD validation data stays what it was
_COMPONENT_INDEX = {"text_encoder": 0, "unet": 1, "vae_decoder": 2, "text_encoder_2": 3}


def build_contracts(
    shapes: ExportShapes,
    precision: str = "fp32",
    tolerances: dict[str, Tolerance] | None = None,
    specs: dict[str, ComponentSpec] | None = None,
) -> dict[str, ComponentContract]:
    """The contract of every component (`specs`, default a StableDiffusionPipeline's) exported at `shapes`."""
    tolerances = tolerances or {}
    default = DEFAULT_TOLERANCES[precision]
    return {
        name: spec.contract(shapes, tolerances.get(name, default)) for name, spec in (specs or SPECS).items()
    }

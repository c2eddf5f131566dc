"""The export contract: what each exported component takes, returns and must agree on.

Modelled on optimum's ONNX exporters: every component (CLIP text encoder, UNet, VAE
decoder) has a contract naming its input and output tensors, which axes are dynamic,
the TensorRT shape profiles built for the requested batch sizes, and the tolerance
against torch that the exported graph must meet. The contract is written into the
bundle manifest, so a consumer (the ONNX Runtime and TensorRT generators, or someone
reading the bundle by hand) never has to guess a shape.

Shapes: the batch axis is the only dynamic axis; resolution and text length are fixed
at export (one bundle = one resolution), which lets ONNX Runtime and TensorRT plan
memory and pick kernels for the real sizes.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field

from auditor.config import FrozenModel

ComponentName = Literal["text_encoder", "unet", "vae_decoder"]
COMPONENTS: tuple[str, ...] = ("text_encoder", "unet", "vae_decoder")
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

    One profile per requested image batch size b: rows from 1 up to b * multiplier
    (classifier-free guidance runs the unconditional and conditional rows together),
    tuned for the full batch.
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
        out.append(
            ShapeProfile(
                image_batch=b,
                min={spec.name: spec.concrete(1) for spec in inputs},
                opt={spec.name: spec.concrete(b * rows) for spec in inputs},
                max={spec.name: spec.concrete(b * rows) for spec in inputs},
            )
        )
    return tuple(out)


def build_contracts(
    shapes: ExportShapes, precision: str = "fp32", tolerances: dict[str, Tolerance] | None = None
) -> dict[str, ComponentContract]:
    """The three contracts for a Stable Diffusion pipeline exported at `shapes`."""
    tolerances = tolerances or {}
    default = DEFAULT_TOLERANCES[precision]
    b = BATCH_AXIS
    c, lh, lw = shapes.latent_channels, shapes.latent_height, shapes.latent_width
    text_in = (TensorSpec(name="input_ids", dtype="int32", shape=(b, shapes.text_length)),)
    text_out = (
        TensorSpec(
            name="last_hidden_state", dtype="float32", shape=(b, shapes.text_length, shapes.text_hidden_size)
        ),
    )
    unet_in = (
        TensorSpec(name="sample", dtype="float32", shape=(b, c, lh, lw)),
        TensorSpec(name="timestep", dtype="float32", shape=(b,)),
        TensorSpec(
            name="encoder_hidden_states",
            dtype="float32",
            shape=(b, shapes.text_length, shapes.text_hidden_size),
        ),
    )
    unet_out = (TensorSpec(name="noise_pred", dtype="float32", shape=(b, c, lh, lw)),)
    vae_in = (TensorSpec(name="latent_sample", dtype="float32", shape=(b, c, lh, lw)),)
    vae_out = (TensorSpec(name="sample", dtype="float32", shape=(b, 3, shapes.height, shapes.width)),)
    specs = {
        "text_encoder": (
            "CLIP text encoder: token ids (padded to the tokenizer's max length) -> last_hidden_state",
            text_in,
            text_out,
            2,
        ),
        "unet": (
            "UNet noise prediction: scaled latents, timestep per row (float), text states -> noise",
            unet_in,
            unet_out,
            2,
        ),
        "vae_decoder": (
            "VAE decoder (post_quant_conv + decoder): latents already divided by scaling_factor -> image in [-1, 1]",
            vae_in,
            vae_out,
            1,
        ),
    }
    return {
        name: ComponentContract(
            component=name,
            description=description,
            inputs=inputs,
            outputs=outputs,
            rows_per_image=rows,
            profiles=_profiles(inputs, shapes.batch_sizes, rows),
            tolerance=tolerances.get(name, default),
        )
        for name, (description, inputs, outputs, rows) in specs.items()
    }


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

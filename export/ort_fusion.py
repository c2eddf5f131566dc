"""ONNX Runtime's transformer optimizer on the UNet graphs, offline at export.

`onnxruntime.transformers.optimizer.optimize_model(..., model_type="unet")` rewrites a UNet
graph into ONNX Runtime's fused operators: MultiHeadAttention (from the scaled-dot-product
pattern: Q and K scaled before the product, Softmax, second MatMul), LayerNormalization and
SkipLayerNormalization, and for the CUDA provider GroupNorm, SkipGroupNorm, NhwcConv,
BiasSplitGelu and BiasAdd, which exist only there. Two targets:

- **cpu**: the fp32 graph with the fusions the CPU provider implements (attention, layer
  norms, Gelu). The export then optimizes that graph offline at the extended level and keeps
  it as `model.ort.onnx` when it validates (`ort_optimization: "transformers+extended"`);
  otherwise the plain levels are tried as before. Validated here, on any host.
- **cuda**: the fp16 graph of a `--precision fp16` bundle with every fusion, written as
  `unet/model.fp16.cuda.onnx` for the onnx backend's CUDA provider. Its CUDA-only operators
  cannot run on a CPU host: it is validated at export only where the CUDA provider runs,
  otherwise when the onnx backend loads it on a GPU, which falls back to the plain fp16
  graph if it misses. In our fp16 graph the attention itself does not fuse (the fp32 casts
  around every LayerNormalization sit between it and the Q/K/V MatMuls the fusion starts
  from); the convolution and normalization fusions do. The manifest records what fused.

Every outcome is recorded (`ComponentRecord.ort_fusions`), including why a target was not
applied: a failed optimizer run only costs the fused graph, never the export.
"""

from __future__ import annotations

import contextlib
import io
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from auditor.errors import first_line
from export.validation import _remove_graph

OPTIMIZER = "onnxruntime.transformers.optimizer (model_type unet)"
# fusions whose operators only the CUDA provider implements
CUDA_ONLY_FUSIONS = (
    "enable_nhwc_conv",
    "enable_group_norm",
    "enable_skip_group_norm",
    "enable_bias_splitgelu",
    "enable_bias_add",
    "enable_packed_qkv",
    "enable_packed_kv",
)


class FusionFailed(Exception):
    """The transformer optimizer raised or produced nothing usable; the message says why (one line)."""


def fusion_options(target: str):
    """FusionOptions("unet") for `target` ("cpu": CUDA-only fusions off)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    options = FusionOptions("unet")
    if target == "cpu":
        for flag in CUDA_ONLY_FUSIONS:
            setattr(options, flag, False)
    return options


@contextlib.contextmanager
def _head_count_from_one_element_arrays() -> Iterator[None]:
    """onnxruntime 1.32's `FusionAttentionUnet.get_num_heads` reads the head count of a
    PyTorch 2 graph with `int()` of a one-element array, which NumPy >= 2.3 refuses (TypeError),
    so every attention of our fp32 UNet graphs crashed the optimizer. Wrapped for the call:
    the original first, the same reading with `.reshape(-1)[0]` only where it raised."""
    import numpy as np

    module = sys.modules.get("fusion_attention_unet")  # the optimizer imports its fusions top-level
    cls = getattr(module, "FusionAttentionUnet", None)
    if cls is None:
        yield
        return
    original = cls.get_num_heads

    def get_num_heads(self, reshape_q, is_torch2: bool = False) -> int:
        try:
            return original(self, reshape_q, is_torch2)
        except TypeError:
            parent = self.model.get_parent(reshape_q, 1)
            if parent is None or parent.op_type != "Concat" or len(parent.input) != 4:
                return 0
            value = np.asarray(self.model.get_constant_value(parent.input[2]))
            heads = int(value.reshape(-1)[0]) if value.size == 1 else 0
            return max(heads, 0)

    cls.get_num_heads = get_num_heads
    try:
        yield
    finally:
        cls.get_num_heads = original


def fuse_unet(src: Path, dst: Path, target: str, external: bool) -> tuple[dict[str, int], float]:
    """Write the transformer optimizer's graph of `src` for `target` to `dst`; return the fused
    operator counts (non-zero only) and the seconds it took. FusionFailed when it cannot."""
    start = time.perf_counter()
    log = io.StringIO()  # its progress bar and logging would otherwise reach stderr
    try:
        with contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
            from onnxruntime.transformers.optimizer import optimize_model

            with _head_count_from_one_element_arrays():
                model = optimize_model(
                    str(src),
                    model_type="unet",
                    num_heads=0,
                    hidden_size=0,
                    opt_level=0,  # the Python fusions only; ONNX Runtime's own levels run after
                    use_gpu=target == "cuda",
                    optimization_options=fusion_options(target),
                )
            fused = {op: int(n) for op, n in model.get_fused_operator_statistics().items() if n}
            model.save_model_to_file(str(dst), use_external_data_format=external)
    except Exception as exc:  # noqa: BLE001 - an optimizer failure only costs the fused graph
        _remove_graph(dst)
        raise FusionFailed(
            f"{OPTIMIZER} failed on {src.name}: {type(exc).__name__}: {first_line(exc)}"
        ) from None
    if not fused:
        _remove_graph(dst)
        raise FusionFailed(f"{OPTIMIZER} fused nothing in {src.name}")
    return fused, round(time.perf_counter() - start, 3)


# ---------------------------------------------------------------- the export's two targets


def fuse_for_cpu(comp_dir: Path, external: bool) -> tuple[Path | None, dict[str, int], float, str | None]:
    """The CPU-target fused graph of `comp_dir/model.onnx` as an intermediate file (the export's
    offline levels start from it); (path or None, fused counts, seconds, why not)."""
    dst = comp_dir / "model.fused.onnx"
    try:
        fused, seconds = fuse_unet(comp_dir / "model.onnx", dst, "cpu", external)
    except FusionFailed as exc:
        return None, {}, 0.0, str(exc)
    return dst, fused, seconds, None


def cpu_record(
    comp: str, intermediate: Path | None, fused, seconds, reason, kept_name: str, level: str, parity
):
    """What happened to the CPU target, once the offline levels chose `kept_name` at `level`."""
    from auditor.backends.engines.bundle import OrtFusionRecord

    if intermediate is not None:
        _remove_graph(intermediate)
        if level != "transformers+extended":
            reason = (
                "its graph did not validate after ONNX Runtime's extended level; the plain levels were used"
            )
    kept = level == "transformers+extended"
    return OrtFusionRecord(
        target="cpu",
        source=f"{comp}/model.onnx",
        onnx=f"{comp}/{kept_name}" if kept else None,
        fused=fused,
        parity=parity if kept else None,
        reason=None if kept else reason,
        seconds=seconds,
    )


def fuse_for_cuda(comp_dir: Path, contract, inputs, references, seed: int, external: bool):
    """The CUDA-target fused graph of the fp16 UNet graph, validated on the CUDA provider when it runs
    here (kept only if it passes), else kept unvalidated with the reason; an OrtFusionRecord."""
    from auditor.backends.engines.bundle import OrtFusionRecord
    from auditor.backends.engines.components import DEFAULT_TOLERANCES, compare
    from auditor.backends.engines.ort import CUDA_PROVIDER, available_providers
    from export.validation import run_graph, validation_providers

    src, dst = comp_dir / "model.fp16.onnx", comp_dir / "model.fp16.cuda.onnx"
    record = {"target": "cuda", "source": f"{comp_dir.name}/{src.name}"}
    try:
        fused, seconds = fuse_unet(src, dst, "cuda", external)
    except FusionFailed as exc:
        return OrtFusionRecord(**record, reason=str(exc))
    record |= {"fused": fused, "seconds": seconds}
    outputs, ran_on = None, None
    if CUDA_PROVIDER in available_providers():
        try:
            outputs, ran_on = run_graph(dst, contract, inputs, validation_providers("auto", "fp16"))
        except Exception as exc:  # noqa: BLE001 - a CPU-only session cannot place the CUDA-only nodes
            outputs, ran_on = None, f"none ({first_line(exc)})"
    if outputs is None or ran_on != CUDA_PROVIDER:
        unvalidated = (
            "not validated at export: its CUDA-only operators need the CUDA provider, which does not run"
            " here; the onnx backend validates it when it loads it on a GPU and falls back to the fp16 graph"
        )
        return OrtFusionRecord(**record, onnx=f"{comp_dir.name}/{dst.name}", reason=unvalidated)
    label = f"onnxruntime {ran_on} (transformers fp16 graph)"
    parity = compare(outputs, references, DEFAULT_TOLERANCES["fp16"], label, seed)
    if not parity.passed:
        _remove_graph(dst)
        return OrtFusionRecord(**record, parity=parity, reason=f"not kept: {parity.summary()}")
    return OrtFusionRecord(**record, onnx=f"{comp_dir.name}/{dst.name}", parity=parity)

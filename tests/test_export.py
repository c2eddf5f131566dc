"""Export fast path: ONNX bundle of a tiny random-weight SD pipeline, its manifest and its refusals."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the export needs onnx (pip install 't2i-auditor[onnx]')")
pytest.importorskip("onnxruntime", reason="the export needs onnxruntime (pip install 't2i-auditor[onnx]')")

from auditor.backends.engines.bundle import (  # noqa: E402
    MANIFEST_NAME,
    BundleIntegrityError,
    BundleManifest,
    load_bundle,
    read_manifest,
)
from auditor.backends.engines.components import (  # noqa: E402
    COMPONENTS,
    DEFAULT_TOLERANCES,
    Tolerance,
    build_contracts,
    compare,
)
from auditor.config import GenerationSettings  # noqa: E402
from auditor.errors import BadInputError, VerificationError  # noqa: E402
from auditor.fileio import sha256_file  # noqa: E402
from export.errors import ExportError, ParityError  # noqa: E402
from export.testing import build_tiny_pipeline, exported_bundle  # noqa: E402
from t2i_audit import main  # noqa: E402

FAST = GenerationSettings(steps=8, guidance_scale=3.0)
# normalization ops as the TorchScript exporter writes them at opset 17 (GroupNorm: InstanceNormalization)
NORM_OPS = ("InstanceNormalization", "LayerNormalization", "GroupNormalization")
PROMPTS = [
    "a red circle on a blue background",
    "a green square on a white background",
    "a yellow triangle on a black background",
    "a blue star on a grey background",
    "a purple circle on a green background",
    "a white square on a red background",
    "an orange triangle on a blue background",
    "a black star on a yellow background",
]


@pytest.fixture(scope="module")
def bundle(tiny_pipeline, tmp_path_factory) -> Path:
    return exported_bundle(tiny_pipeline, tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def ort_threads():
    from auditor.backends.engines.ort import default_threads

    assert default_threads() == 1  # conftest pins torch to one thread; ORT follows it
    return 1


def _one_line(captured) -> str:
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1, captured.err
    return lines[0]


# ---------------------------------------------------------------- manifest


def test_manifest_records_source_components_and_parity(bundle, tiny_pipeline):
    from auditor.identity import hash_model

    manifest = read_manifest(bundle)
    assert manifest.source.digest == hash_model(tiny_pipeline).digest
    assert (bundle / manifest.source.relative_path).resolve() == tiny_pipeline.resolve()
    assert manifest.opset == 17 and manifest.precision == "fp16"  # fp32 graphs plus fp16 graphs
    assert (manifest.shapes.height, manifest.shapes.width) == (32, 32)
    assert manifest.shapes.batch_sizes == (1, 16)
    assert manifest.shapes.latent_height == 8  # the zoo VAE downsamples 4x
    assert manifest.parity_passed
    assert set(manifest.components) == set(COMPONENTS)
    for name, record in manifest.components.items():
        assert record.parity.passed, name
        assert record.parity.max_abs_error is not None and record.parity.max_abs_error < 1e-4
        assert record.parity.batch == 3  # not the trace batch: the batch axis really is dynamic
        for entry in (*record.files, record.validation):
            assert sha256_file(bundle / entry.path) == entry.sha256
        assert record.onnx in {f.path for f in record.files}
        assert record.ort_cpu in {f.path for f in record.files}
        assert not record.external_data
        assert record.fp16 is not None and record.fp16.onnx in {f.path for f in record.files}
        assert record.fp16.parity.passed and record.fp16.parity.tolerance == DEFAULT_TOLERANCES["fp16"]
        # fp16 is really coarser than fp32, and still far inside its bound
        assert 10 * record.parity.max_abs_error < record.fp16.parity.max_abs_error
        assert record.fp16.parity.max_abs_error < record.fp16.parity.tolerance.bound(
            record.fp16.parity.reference_max_abs
        )
    for tool in ("torch", "onnx", "onnxruntime", "diffusers", "transformers", "t2i-auditor"):
        assert manifest.tools[tool]
    assets = {a.path for a in manifest.assets}
    assert "scheduler/scheduler_config.json" in assets and "model_index.json" in assets
    assert any(path.startswith("tokenizer/") for path in assets)


def test_onnx_graphs_follow_their_contract(bundle):
    import onnx

    manifest = read_manifest(bundle)
    for record in manifest.components.values():
        contract = record.contract
        graph = onnx.load(str(bundle / record.onnx), load_external_data=False)
        assert {op.version for op in graph.opset_import if op.domain in ("", "ai.onnx")} == {17}
        assert [i.name for i in graph.graph.input] == contract.input_names
        assert [o.name for o in graph.graph.output] == contract.output_names
        for value in graph.graph.input:
            first = value.type.tensor_type.shape.dim[0]
            assert first.dim_param == "batch" and not first.HasField("dim_value")
        assert [p.image_batch for p in contract.profiles] == [1, 16]
        rows = contract.rows_per_image
        for profile in contract.profiles:  # static: TensorRT tunes each for the one shape it runs
            for name in contract.input_names:
                assert profile.min[name] == profile.opt[name] == profile.max[name]
                assert profile.max[name][0] == profile.image_batch * rows


def _value_types(model) -> dict[str, int]:
    """Element type of every tensor in the graph, after ONNX shape inference."""
    import onnx

    inferred = onnx.shape_inference.infer_shapes(model)
    values = [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
    types = {v.name: v.type.tensor_type.elem_type for v in values}
    types.update({t.name: t.data_type for t in inferred.graph.initializer})
    return types


@dataclass(frozen=True)
class AttentionPattern:
    """What surrounds one Softmax of a graph, as fused-attention kernels see it."""

    axis: int
    between: tuple[str, ...]  # ops between the first MatMul and the Softmax
    q_scaled: bool  # the first MatMul's left input is a Mul by a scale (applied before the product)
    k_scaled: bool
    zero_add: bool  # an Add of ConstantOfShape(...) x 0 on the way (the classic processor's baddbmm)
    after: str  # the op the softmax feeds (through Casts)

    @property
    def fusable(self) -> bool:
        """SDPA's pattern: Mul(Q, s), Mul(K^T, s), MatMul, Softmax(last axis), MatMul; Casts allowed only
        outside it."""
        return (
            self.axis == -1
            and not self.between
            and self.q_scaled
            and self.k_scaled
            and not self.zero_add
            and self.after == "MatMul"
        )


def attention_patterns(model) -> list[AttentionPattern]:
    """The attention pattern around every Softmax of an ONNX model."""
    nodes = model.graph.node
    producer = {out: n for n in nodes for out in n.output}
    consumers: dict[str, list] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)

    def zero_tensor(name: str) -> bool:  # ConstantOfShape, or a Mul of one (baddbmm's beta=0 input)
        node = producer.get(name)
        if node is None or node.op_type == "ConstantOfShape":
            return node is not None
        return node.op_type == "Mul" and any(
            i in producer and producer[i].op_type == "ConstantOfShape" for i in node.input
        )

    def scaled(name: str) -> bool:
        node = producer.get(name)
        return (
            node is not None
            and node.op_type == "Mul"
            and any(
                i not in producer or producer[i].op_type in ("Sqrt", "Constant", "Cast") for i in node.input
            )
        )

    out = []
    for softmax in (n for n in nodes if n.op_type == "Softmax"):
        axis = next((a.i for a in softmax.attribute if a.name == "axis"), -1)
        between, zero, node = [], False, producer.get(softmax.input[0])
        while node is not None and node.op_type != "MatMul" and len(between) < 8:
            between.insert(0, node.op_type)
            if node.op_type == "Add":
                zero |= any(zero_tensor(i) for i in node.input)
                rest = [i for i in node.input if not zero_tensor(i)]
                node = producer.get(rest[0]) if rest else None
            else:
                node = producer.get(node.input[0])
        q_scaled = k_scaled = False
        if node is not None and node.op_type == "MatMul":
            q_scaled, k_scaled = scaled(node.input[0]), scaled(node.input[1])
        after = consumers.get(softmax.output[0], [None])[0]
        while after is not None and after.op_type == "Cast":
            after = consumers.get(after.output[0], [None])[0]
        out.append(
            AttentionPattern(axis, tuple(between), q_scaled, k_scaled, zero, after.op_type if after else "")
        )
    return out


def test_fp16_graphs_compute_in_fp16_behind_a_float32_boundary(bundle):
    import onnx
    from onnx import TensorProto

    manifest = read_manifest(bundle)
    for name, record in manifest.components.items():
        graph = onnx.load(str(bundle / record.fp16.onnx))
        fp32 = onnx.load(str(bundle / record.onnx))
        # same contract as the fp32 graph: the loop and TensorRT bindings see float32 / int32
        for ours, theirs in ((graph.graph.input, fp32.graph.input), (graph.graph.output, fp32.graph.output)):
            assert [(v.name, v.type.tensor_type.elem_type) for v in ours] == [
                (v.name, v.type.tensor_type.elem_type) for v in theirs
            ], name
        types = _value_types(graph)
        heavy = [n for n in graph.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
        assert heavy and all(types[n.input[0]] == TensorProto.FLOAT16 for n in heavy), name
        initializers = {t.name: t for t in graph.graph.initializer}
        weights = [initializers[n.input[1]] for n in heavy if n.input[1] in initializers]
        assert weights and all(t.data_type == TensorProto.FLOAT16 for t in weights), name
        assert record.fp16.normalization == "fp32"
        # the text encoder's 77 x 77 scores take an fp32 softmax; the UNet's and the VAE's attention
        # is SDPA's fused pattern in fp16 (Q and K prescaled, test_fp16_attention_is_in_the_pattern...)
        softmax = [n for n in graph.graph.node if n.op_type == "Softmax"]
        want = TensorProto.FLOAT if name == "text_encoder" else TensorProto.FLOAT16
        assert record.fp16.attention == ("fp32-softmax" if name == "text_encoder" else "sdpa-fp16"), name
        assert softmax and all(types[n.input[0]] == want for n in softmax), name
        # where fp16 overflows: every normalization computes in fp32
        norms = [n for n in graph.graph.node if n.op_type in NORM_OPS]
        assert norms and all(types[n.input[0]] == TensorProto.FLOAT for n in norms), name
        assert all(types[n.input[1]] == TensorProto.FLOAT for n in norms), name  # fp32 scale too
        if name == "unet":
            timestep = next(n for n in graph.graph.node if "timestep" in n.input)
            assert types[timestep.output[0]] == TensorProto.FLOAT  # timesteps are embedded in fp32


def test_fp16_attention_is_in_the_pattern_fused_kernels_match(bundle):
    """Issue 23: Q and K scaled before the product, no zero-tensor add, Softmax over the last axis,
    second MatMul, in the UNet's and the VAE's graphs of both precisions (TensorRT's fused attention
    needs the scale on Q and K before the first MatMul; ONNX Runtime's UNet fusion matches it too)."""
    import onnx

    manifest = read_manifest(bundle)
    for name in ("unet", "vae_decoder"):
        record = manifest.components[name]
        for path in (record.onnx, record.fp16.onnx):
            model = onnx.load(str(bundle / path))
            patterns = attention_patterns(model)
            assert patterns and all(p.fusable for p in patterns), (path, patterns)
            softmax_inputs = {n.input[0] for n in model.graph.node if n.op_type == "Softmax"}
            assert not any(  # nothing but the product itself reaches a softmax
                n.op_type in ("Add", "ConstantOfShape") and set(n.output) & softmax_inputs
                for n in model.graph.node
            ), path


def _export_attention(tmp_path, processor: str):
    """One diffusers Attention (2 heads of 16), fp16, exported as the exporter does; its graph."""
    import warnings

    import onnx
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor

    from auditor.backends.engines.half import fusable_attention

    torch.manual_seed(0)
    module = Attention(query_dim=32, heads=2, dim_head=16).eval().half()
    if processor == "classic":  # what the fp16 export used before: baddbmm, fp32 softmax
        module.upcast_softmax = True
        module.set_processor(AttnProcessor())
    else:
        assert fusable_attention(module, upcast_attention=processor == "upcast") is not None
    path = tmp_path / f"{processor}.onnx"
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.randn(2, 64, 32, dtype=torch.float16),),
            str(path),
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "batch"}, "y": {0: "batch"}},
            opset_version=17,
            dynamo=False,
        )
    return onnx.load(str(path))


def test_one_attention_module_before_and_after(tmp_path):
    """The classic processor's graph (scale after the product, a zero add, casts around the softmax) is
    what no fused kernel matches; the SDPA processors' graphs are the pattern, fp16 and upcast alike."""
    (classic,) = attention_patterns(_export_attention(tmp_path, "classic"))
    assert not classic.fusable and classic.zero_add and not classic.q_scaled
    assert classic.between == ("Mul", "Add", "Cast")
    for processor in ("sdpa", "upcast"):
        (pattern,) = attention_patterns(_export_attention(tmp_path, processor))
        assert pattern.fusable and pattern.between == (), (processor, pattern)


def test_the_upcast_processor_computes_what_sdpa_does():
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor2_0

    from auditor.backends.engines.half import Fp32SdpaProcessor

    torch.manual_seed(0)
    module = Attention(query_dim=32, heads=2, dim_head=16, cross_attention_dim=24).eval()
    x, context = torch.randn(2, 64, 32), torch.randn(2, 7, 24)
    with torch.no_grad():
        module.set_processor(AttnProcessor2_0())
        want = module(x, encoder_hidden_states=context)
        module.set_processor(Fp32SdpaProcessor())
        got = module(x, encoder_hidden_states=context)
    assert torch.allclose(got, want, atol=1e-6)


def test_unet_graphs_go_through_onnx_runtimes_transformer_optimizer(bundle):
    """CPU target: the fp32 UNet's attention fused into ONNX Runtime's attention operators, validated here
    and kept as the CPU graph. CUDA target: the fp16 UNet's CUDA-only fusions, kept with the reason it
    was not validated on this host (the onnx backend validates it on a GPU), or validated where the CUDA
    provider runs."""
    import onnx
    import onnxruntime

    manifest = read_manifest(bundle)
    unet = manifest.components["unet"]
    cpu, cuda = unet.ort_fusion("cpu"), unet.ort_fusion("cuda")
    assert unet.ort_optimization == "transformers+extended" and unet.ort_cpu == "unet/model.ort.onnx"
    assert cpu.onnx == unet.ort_cpu and cpu.source == "unet/model.onnx" and cpu.reason is None
    assert cpu.fused.get("MultiHeadAttention", 0) + cpu.fused.get("Attention", 0) == 8  # 4 self, 4 cross
    assert cpu.parity.passed and cpu.parity == unet.parity and "transformers+extended" in cpu.parity.runtime
    ops = {n.op_type for n in onnx.load(str(bundle / unet.ort_cpu)).graph.node}
    assert ops & {"MultiHeadAttention", "Attention"} and "Softmax" not in ops
    assert cuda.source == unet.fp16.onnx and cuda.onnx == "unet/model.fp16.cuda.onnx"
    assert cuda.fused.get("GroupNorm", 0) > 0 and cuda.fused.get("NhwcConv", 0) > 0
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():  # validated at export here
        assert cuda.parity is not None and "CUDA provider" not in (cuda.reason or "")
    else:
        assert cuda.parity is None and "CUDA provider" in cuda.reason
    assert cuda.onnx in {f.path for f in unet.files}  # hashed like every graph
    assert "unet/model.fused.onnx" not in {f.path for f in unet.files}  # the intermediate is gone
    for name in ("text_encoder", "vae_decoder"):
        assert manifest.components[name].ort_fusions == ()


def test_validation_names_the_provider_that_ran(bundle, tmp_path):
    """Asked for CUDA on a host where it does not run, the record says CPUExecutionProvider."""
    from auditor.backends.engines.bundle import load_validation
    from auditor.backends.engines.ort import (
        CPU_PROVIDER,
        CUDA_PROVIDER,
        available_providers,
        provider_options,
    )
    from export.validation import optimize_and_validate, run_graph

    if CUDA_PROVIDER in available_providers():
        pytest.skip("the CUDA provider is installed here")
    record = read_manifest(bundle).components["vae_decoder"]
    inputs, references = load_validation(bundle / record.validation.path)
    asked = [
        provider_options(CUDA_PROVIDER, device_index=0, precision="fp32", contract=None, cache_dir=None),
        CPU_PROVIDER,
    ]
    outputs, ran_on = run_graph(bundle / record.onnx, record.contract, inputs, asked)
    assert ran_on == CPU_PROVIDER and set(outputs) == {"sample"}
    copy = tmp_path / "vae_decoder"
    shutil.copytree(bundle / "vae_decoder", copy)
    _, level, parity = optimize_and_validate(
        copy, record.contract, False, inputs, references, 0, cpu_graphs=False, providers=asked
    )
    assert level == "none" and parity.runtime == f"onnxruntime {CPU_PROVIDER} (none)" and parity.passed


def test_fp16_denoising_loop_parity_is_recorded(bundle):
    """--precision fp16 runs the real loop (tokenizer, scheduler, graphs) on prompts, fp16 against fp32."""
    from export.loop_parity import DEFAULT_PROMPTS, MIN_PSNR_DB

    loop = read_manifest(bundle).fp16_loop_parity
    assert loop is not None and loop.passed and loop.finite
    assert loop.prompts == DEFAULT_PROMPTS[:2] and loop.steps == 8 and loop.guidance_scale == 7.5
    assert loop.psnr_db >= MIN_PSNR_DB and loop.max_pixel_diff <= 4
    assert "CPUExecutionProvider" in loop.runtime


def test_fp16_loop_parity_fails_a_graph_that_overflows(bundle, tmp_path):
    """A NaN in one step of the fp16 UNet (what an overflow gives) fails the check and marks the bundle."""
    from onnx_poison import poisoned

    from auditor.backends.engines.bundle import Bundle
    from export.loop_parity import fp16_loop_parity

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = read_manifest(copy)
    graph = copy / manifest.components["unet"].fp16.onnx
    poisoned(graph, graph, float("nan"))
    loop = fp16_loop_parity(Bundle(copy, manifest), ("a red circle",), steps=3)
    assert not loop.passed and not loop.finite and loop.psnr_db is None
    assert "unet output holds NaN" in loop.detail
    failed = manifest.model_copy(update={"fp16_loop_parity": loop}).failed_parity()
    assert failed and failed[-1].startswith("fp16 graphs (denoising loop")


def test_cli_parity_options(tiny_pipeline, tmp_path, capsys):
    assert main(["export", str(tiny_pipeline), "--out", str(tmp_path / "b"), "--parity-steps", "-1"]) == 2
    assert "--parity-steps" in _one_line(capsys.readouterr())
    (tmp_path / "empty.txt").write_text("# only a comment\n")
    args = [
        "export",
        str(tiny_pipeline),
        "--out",
        str(tmp_path / "b"),
        "--parity-prompts",
        str(tmp_path / "empty.txt"),
    ]
    assert main(args) == 2
    assert "one prompt per line" in _one_line(capsys.readouterr())
    (tmp_path / "prompts.txt").write_text("a blue star on a red background\n\n")
    args = [*args[:-1], str(tmp_path / "prompts.txt"), "--precision", "fp16", "--parity-steps", "2"]
    args += ["--batch-sizes", "1", "--format", "json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["fp16_loop_parity"]["prompts"] == ["a blue star on a red background"]
    assert out["fp16_loop_parity"]["steps"] == 2 and out["fp16_loop_parity"]["passed"]


def test_upcast_attention_keeps_the_unet_attention_in_fp32(tiny_pipeline, tmp_path):
    """SD 2.x sets upcast_attention: its fp16 UNet graph computes QK^T, softmax and PV in fp32, in the
    same prescaled pattern (the projections around it stay fp16)."""
    import onnx
    from onnx import TensorProto

    from export.exporter import export_bundle

    model = tmp_path / "sd2-like"
    shutil.copytree(tiny_pipeline, model)
    config = json.loads((model / "unet" / "config.json").read_text())
    (model / "unet" / "config.json").write_text(json.dumps(config | {"upcast_attention": True}))
    manifest = export_bundle(model, tmp_path / "b", precision="fp16", batch_sizes=(1,))
    record = manifest.components["unet"]
    assert manifest.pipeline.upcast_attention and record.fp16.attention == "sdpa-fp32"
    assert record.fp16.parity.passed
    graph = onnx.load(str(tmp_path / "b" / record.fp16.onnx))
    types = _value_types(graph)
    softmax = [n for n in graph.graph.node if n.op_type == "Softmax"]
    assert softmax and all(types[n.input[0]] == TensorProto.FLOAT for n in softmax)
    patterns = attention_patterns(graph)
    assert len(patterns) == len(softmax) and all(p.fusable for p in patterns), patterns
    assert manifest.components["text_encoder"].fp16.attention == "fp32-softmax"
    assert manifest.components["vae_decoder"].fp16.attention == "sdpa-fp16"


def test_manifest_is_frozen_and_forbids_unknown_fields(bundle):
    raw = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest = BundleManifest.model_validate(raw)
    with pytest.raises(Exception):  # noqa: B017 - pydantic's frozen-instance error
        manifest.opset = 5  # type: ignore[misc]
    with pytest.raises(Exception):  # noqa: B017
        BundleManifest.model_validate(raw | {"surprise": 1})
    bad = json.loads(json.dumps(raw))
    bad["components"]["unet"]["onnx"] = "../../etc/passwd"
    with pytest.raises(Exception):  # noqa: B017
        BundleManifest.model_validate(bad)
    for pipeline_class in ("StableDiffusionXLPipeline", "FluxPipeline"):  # graphs of another pipeline
        bad = json.loads(json.dumps(raw))
        bad["pipeline"]["pipeline_class"] = pipeline_class
        with pytest.raises(
            ValueError, match="pipeline_class|StableDiffusionXLPipeline bundle has the components"
        ):
            BundleManifest.model_validate(bad)


def test_contract_helpers():
    from auditor.backends.engines.components import ExportShapes

    shapes = ExportShapes(
        height=64,
        width=32,
        vae_scale_factor=8,
        latent_channels=4,
        text_length=77,
        text_hidden_size=768,
        vocab_size=49408,
        batch_sizes=(4,),
    )
    unet = build_contracts(shapes)["unet"]
    assert unet.dynamic_axes()["sample"] == {0: "batch"}
    assert unet.inputs[0].concrete(3) == (3, 4, 8, 4)
    ref = {"noise_pred": np.ones((2, 3), np.float32)}
    ok = compare({"noise_pred": ref["noise_pred"] + 1e-5}, ref, Tolerance(atol=1e-4, rtol=0), "x", 0)
    assert ok.passed and ok.max_abs_error == pytest.approx(1e-5, rel=1e-2)
    nan = compare({"noise_pred": ref["noise_pred"] * np.nan}, ref, Tolerance(atol=1, rtol=1), "x", 0)
    assert not nan.passed and nan.max_abs_error is None


# ---------------------------------------------------------------- refusals


def test_tampered_component_is_refused(bundle, tmp_path, capsys):
    from auditor.backends.engines import open_bundle

    copy = tmp_path / "tampered"
    shutil.copytree(bundle, copy)
    target = copy / "unet" / "model.ort.onnx"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(BundleIntegrityError, match="unet/model.ort.onnx"):
        load_bundle(copy)
    with pytest.raises(VerificationError):
        open_bundle(copy, backend="onnx", device="cpu")
    assert main(["bundle-verify", str(copy)]) == 1
    assert "sha256" in _one_line(capsys.readouterr())
    (copy / "vae_decoder" / "validation.npz").unlink()
    with pytest.raises(BundleIntegrityError):
        load_bundle(copy)


def test_other_source_model_is_refused(bundle, tiny_pipeline, tmp_path, capsys):
    other = build_tiny_pipeline(tmp_path, seed=1)
    assert main(["bundle-verify", str(bundle), "--model", str(tiny_pipeline)]) == 0
    capsys.readouterr()
    with pytest.raises(BadInputError, match="differs from the bundle's source"):
        load_bundle(bundle, model=other)
    from auditor.backends.engines import open_bundle

    with pytest.raises(BadInputError, match="differs"):
        open_bundle(bundle, backend="onnx", model=other)
    assert main(["bundle-verify", str(bundle), "--model", str(other)]) == 2
    assert "differs" in _one_line(capsys.readouterr())


def test_tolerance_miss_is_a_typed_error_and_engines_fall_back(tiny_pipeline, tmp_path):
    from auditor.backends.engines import FallbackGenerator, open_bundle
    from export.exporter import export_bundle

    out = tmp_path / "strict"
    impossible = {"text_encoder": Tolerance(atol=0.0, rtol=0.0)}
    with pytest.raises(ParityError, match="text_encoder") as caught:
        export_bundle(tiny_pipeline, out, batch_sizes=(1,), tolerances=impossible)
    assert isinstance(caught.value, ExportError) and caught.value.exit_code == 2
    manifest = load_bundle(out).manifest
    assert not manifest.parity_passed and not manifest.components["text_encoder"].parity.passed
    assert manifest.components["text_encoder"].ort_optimization == "none"  # every level tried
    assert manifest.components["unet"].parity.passed

    gen = open_bundle(out, backend="onnx", device="cpu")
    assert isinstance(gen, FallbackGenerator)
    info = gen.describe()
    assert info.backend == "torch" and "parity" in info.note and "text_encoder" in info.note

    moved = tmp_path / "elsewhere" / "deeper" / "strict"
    shutil.copytree(out, moved)  # the recorded relative path to the source no longer resolves
    with pytest.raises(BadInputError, match="no torch fallback"):
        open_bundle(moved, backend="onnx", device="cpu")
    gen = open_bundle(moved, backend="onnx", device="cpu", model=tiny_pipeline)
    assert isinstance(gen, FallbackGenerator)


def test_missing_provider_falls_back_with_a_note(bundle):
    from auditor.backends.engines import FallbackGenerator, open_bundle
    from auditor.backends.engines.ort import available_providers

    if "CUDAExecutionProvider" in available_providers():
        pytest.skip("this onnxruntime has the CUDA provider")
    gen = open_bundle(bundle, backend="onnx", device="cpu", providers=["cuda", "cpu"])
    assert isinstance(gen, FallbackGenerator)
    assert "CUDAExecutionProvider" in gen.describe().note


def test_tensorrt_backend_without_tensorrt_falls_back(bundle):
    from auditor.backends.engines import FallbackGenerator, open_bundle
    from auditor.backends.engines.trt import tensorrt_status

    reason = tensorrt_status()
    if reason is None:
        pytest.skip("TensorRT and CUDA are present here")
    gen = open_bundle(bundle, backend="tensorrt", device="auto")
    assert isinstance(gen, FallbackGenerator)
    assert gen.describe().backend == "torch" and reason in gen.describe().note


def test_other_resolution_is_refused(bundle):
    from auditor.backends.engines import open_bundle

    gen = open_bundle(bundle, backend="onnx", device="cpu")
    with pytest.raises(BadInputError, match="exported for 32x32"):
        gen.generate(["a red circle"], [0], GenerationSettings(steps=2, height=64, width=64))


def test_cli_trt_without_cuda_is_one_line_exit_2(tiny_pipeline, tmp_path, capsys):
    from auditor.backends.engines.trt import tensorrt_status

    if tensorrt_status() is None:
        pytest.skip("TensorRT and CUDA are present here")
    assert main(["export", str(tiny_pipeline), "--out", str(tmp_path / "b"), "--trt"]) == 2
    assert "--trt" in _one_line(capsys.readouterr())
    assert not (tmp_path / "b").exists()


def test_cli_refuses_a_folder_that_is_not_a_pipeline(tmp_path, capsys):
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "weights.bin").write_bytes(b"0")
    assert main(["export", str(tmp_path / "junk"), "--out", str(tmp_path / "b")]) == 2
    assert "model_index.json" in _one_line(capsys.readouterr())


@pytest.mark.parametrize("opset", ["5", "13", "21"])
def test_cli_refuses_unsupported_opsets(tiny_pipeline, tmp_path, capsys, opset):
    assert main(["export", str(tiny_pipeline), "--out", str(tmp_path / "b"), "--opset", opset]) == 2
    assert "--opset" in _one_line(capsys.readouterr())


def test_cli_refuses_an_existing_out(tiny_pipeline, bundle, capsys):
    assert main(["export", str(tiny_pipeline), "--out", str(bundle)]) == 2
    assert "already exists" in _one_line(capsys.readouterr())


def test_external_data_path(tiny_pipeline, tmp_path):
    """Past the 2 GB proto limit weights go to one external file; forced here with a 0-byte threshold."""
    from auditor.backends.engines import BackendUnavailable, FallbackGenerator, open_bundle
    from auditor.backends.engines.ort import OnnxGenerator
    from export.exporter import export_bundle

    manifest = export_bundle(tiny_pipeline, tmp_path / "ext", batch_sizes=(2,), external_data_min_bytes=0)
    for name, record in manifest.components.items():
        assert record.external_data and record.parity.passed, name
        paths = {f.path for f in record.files}
        assert f"{name}/model.onnx.data" in paths
        if record.ort_cpu != record.onnx:
            assert f"{record.ort_cpu}.data" in paths
    gen = open_bundle(tmp_path / "ext", backend="onnx", device="cpu")
    assert isinstance(gen, OnnxGenerator)
    assert gen.generate(["a red circle"], [3], FAST).shape == (1, 32, 32, 3)

    # an fp32-only bundle has nothing for float16 backends: refused by name, torch stands in
    assert manifest.precision == "fp32" and all(r.fp16 is None for r in manifest.components.values())
    with pytest.raises(BackendUnavailable, match="--precision fp16"):
        manifest.graph_for("unet", "fp16")
    assert manifest.graph_for("unet", "fp32") == "unet/model.onnx"
    gen = open_bundle(tmp_path / "ext", backend="onnx", device="cpu", dtype="float16")
    assert isinstance(gen, FallbackGenerator)
    info = gen.describe()
    assert info.backend == "torch" and info.dtype == "float16" and "--precision fp16" in info.note
    with pytest.raises(BadInputError, match="bfloat16"):
        open_bundle(tmp_path / "ext", backend="onnx", device="cpu", dtype="bfloat16")


# ---------------------------------------------------------------- verdict parity


@pytest.mark.parametrize(("dtype", "max_pixel"), [("float32", 2), ("float16", 4)])
def test_verdict_parity_onnx_vs_torch(bundle, tiny_pipeline, ort_threads, dtype, max_pixel):
    """What an audit compares: reconstruction distances between the two paths are ~0 (torch in fp32)."""
    from auditor.backends import TorchGenerator
    from auditor.backends.engines import open_bundle
    from auditor.backends.engines.ort import OnnxGenerator
    from auditor.distance import normalized_l2
    from auditor.images import to_float

    settings = GenerationSettings(steps=20, guidance_scale=3.0)
    seeds = [11, 12, 13, 14, 1_000_003, 1_000_004, 2**40 + 7, 5]
    engine = open_bundle(bundle, backend="onnx", device="cpu", batch_size=8, dtype=dtype)
    assert isinstance(engine, OnnxGenerator) and engine.describe().dtype == dtype
    torch_gen = TorchGenerator(tiny_pipeline, device="cpu", batch_size=8)
    a = engine.generate(PROMPTS, seeds, settings)
    b = torch_gen.generate(PROMPTS, seeds, settings)
    distances = normalized_l2(to_float(a), to_float(b))
    assert distances.mean() < 0.01, distances
    assert np.abs(a.astype(int) - b.astype(int)).max() <= max_pixel

"""SDXL bundles: four ONNX graphs with their contracts and parity, the VAE kept fp32, the shared loop.

One fp16 export of the tiny random-weight SDXL pipeline (tests/conftest.py) serves the module.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx", reason="the export needs onnx (pip install 't2i-auditor[onnx]')")
pytest.importorskip("onnxruntime", reason="the export needs onnxruntime (pip install 't2i-auditor[onnx]')")

from auditor.backends import SDXL_PIPELINE, SuspectSpec, inspect_model, open_suspect  # noqa: E402
from auditor.backends.engines.bundle import read_manifest  # noqa: E402
from auditor.config import GenerationSettings  # noqa: E402

SETTINGS = GenerationSettings(steps=8, guidance_scale=3.0, height=32, width=32)
PROMPTS = ["a red circle on a blue background", "a green square on a white background", "a blue star"]
SEEDS = [3, 4, 5]


@pytest.fixture(scope="module")
def xl_bundle(tiny_xl_pipeline, tmp_path_factory) -> Path:
    from export.testing import exported_bundle

    return exported_bundle(tiny_xl_pipeline, tmp_path_factory.mktemp("xl-export"))


@pytest.fixture(scope="module")
def torch_xl(tiny_xl_pipeline):
    return open_suspect(SuspectSpec(model=str(tiny_xl_pipeline), device="cpu"))


def test_an_sdxl_bundle_holds_four_components_with_their_contracts(xl_bundle, tiny_xl_pipeline):
    manifest = read_manifest(xl_bundle)
    assert manifest.pipeline.pipeline_class == SDXL_PIPELINE
    assert manifest.pipeline.tokenizer_2_class == "CLIPTokenizer"
    assert (xl_bundle / "tokenizer_2" / "tokenizer_config.json").is_file()
    assert list(manifest.components) == ["text_encoder", "text_encoder_2", "unet", "vae_decoder"]
    assert manifest.parity_passed and (manifest.shapes.text_hidden_size_2, manifest.shapes.pooled_size) == (
        64,
        32,
    )
    contracts = {name: record.contract for name, record in manifest.components.items()}
    assert [(t.name, t.shape) for t in contracts["unet"].inputs] == [
        ("sample", ("batch", 4, 8, 8)),
        ("timestep", ("batch",)),
        ("encoder_hidden_states", ("batch", 16, 96)),
        ("text_embeds", ("batch", 32)),
        ("time_ids", ("batch", 6)),
    ]
    assert [(t.name, t.shape) for t in contracts["text_encoder_2"].outputs] == [
        ("penultimate_hidden_state", ("batch", 16, 64)),
        ("text_embeds", ("batch", 32)),
    ]
    assert contracts["text_encoder"].output_names == ["penultimate_hidden_state"]
    for name, record in manifest.components.items():
        assert record.parity.passed and record.fp16.parity.passed, name
        # TensorRT profiles: every input, from 1 row up to the largest batch's rows
        largest = max(record.contract.profiles, key=lambda p: p.image_batch)
        assert set(largest.max) == set(record.contract.input_names)
        assert all(shape[0] == 16 * record.contract.rows_per_image for shape in largest.max.values())
    assert manifest.fp16_loop_parity.passed and manifest.fp16_loop_parity.finite
    info = inspect_model(SuspectSpec(model=str(xl_bundle), backend="onnx"))
    assert info.is_xl and (info.height, info.width) == (32, 32)


def test_the_sdxl_vae_stays_fp32_in_the_fp16_graph_set(xl_bundle):
    import onnx
    from onnx import TensorProto

    manifest = read_manifest(xl_bundle)
    vae = manifest.components["vae_decoder"]
    assert vae.fp16.precision == "fp32" and vae.fp16.onnx == vae.onnx == "vae_decoder/model.onnx"
    assert manifest.graph_for("vae_decoder", "fp16") == "vae_decoder/model.onnx"
    weights = onnx.load(str(xl_bundle / vae.onnx)).graph.initializer
    assert weights and not any(t.data_type == TensorProto.FLOAT16 for t in weights)
    unet = onnx.load(str(xl_bundle / manifest.components["unet"].fp16.onnx))
    assert manifest.components["unet"].fp16.precision == "fp16"
    assert any(t.data_type == TensorProto.FLOAT16 for t in unet.graph.initializer)
    # the size conditioning enters the fp16 UNet as float32 and is embedded before any cast
    inputs = {v.name: v.type.tensor_type.elem_type for v in unet.graph.input}
    assert inputs["time_ids"] == inputs["text_embeds"] == TensorProto.FLOAT


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_the_onnx_backend_runs_sdxl_bundles_like_torch(xl_bundle, torch_xl, dtype):
    onnx_xl = open_suspect(SuspectSpec(model=str(xl_bundle), backend="onnx", device="cpu", dtype=dtype))
    assert onnx_xl.describe().backend == "onnx" and onnx_xl.describe().dtype == dtype
    cropped = SETTINGS.model_copy(update={"crops_coords_top_left": (8, 0), "original_size": (64, 64)})
    for settings in (SETTINGS, cropped):
        got = onnx_xl.generate(PROMPTS, SEEDS, settings)
        want = torch_xl.generate(PROMPTS, SEEDS, settings)
        assert int(np.abs(got.astype(int) - want.astype(int)).max()) <= 1, settings
    assert not np.array_equal(
        onnx_xl.generate(PROMPTS, SEEDS, cropped), onnx_xl.generate(PROMPTS, SEEDS, SETTINGS)
    )


def test_tensorrt_provider_profiles_cover_the_sdxl_inputs(xl_bundle):
    from auditor.backends.engines.ort import TENSORRT_PROVIDER, provider_options

    contract = read_manifest(xl_bundle).components["unet"].contract
    _, options = provider_options(
        TENSORRT_PROVIDER, device_index=0, precision="fp16", contract=contract, cache_dir=None
    )
    assert "text_embeds:32x32" in options["trt_profile_max_shapes"]
    assert "time_ids:32x6" in options["trt_profile_max_shapes"]
    assert "time_ids:1x6" in options["trt_profile_min_shapes"]


def test_exporting_an_unsupported_pipeline_is_one_line_exit_2(tiny_xl_pipeline, tmp_path, capsys):
    import json
    import shutil

    from t2i_audit import main

    model = tmp_path / "sd3"
    shutil.copytree(tiny_xl_pipeline, model)
    index = json.loads((model / "model_index.json").read_text()) | {"_class_name": "StableDiffusion3Pipeline"}
    (model / "model_index.json").write_text(json.dumps(index))
    assert main(["export", str(model), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and f"{model / 'model_index.json'}: pipeline 'StableDiffusion3Pipeline'" in err
    )
    assert not (tmp_path / "b").exists()


def test_io_binding_runners_bind_every_output_of_an_sdxl_bundle(xl_bundle):
    """What the GPU path uses (latents on the device, outputs bound by address), here with CPU
    tensors: text_encoder_2 returns two outputs, both bound."""
    from auditor.backends.engines.bundle import load_bundle
    from auditor.backends.engines.ort import BoundRunners, OnnxGenerator, OrtRunners

    bound = OnnxGenerator(load_bundle(xl_bundle), device="cpu", io_binding=True)
    plain = OnnxGenerator(load_bundle(xl_bundle), device="cpu")
    assert isinstance(bound.loop.runners, BoundRunners) and isinstance(plain.loop.runners, OrtRunners)
    assert np.array_equal(bound.generate(PROMPTS, SEEDS, SETTINGS), plain.generate(PROMPTS, SEEDS, SETTINGS))

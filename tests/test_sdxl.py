"""SDXL-family models through the one backend factory: folders, pipeline choice, size conditioning.

The tiny SDXL pipeline (random weights, tests/conftest.py) is a real StableDiffusionXLPipeline
folder: two CLIP text encoders, pooled embeddings, `text_time` added conditioning.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from auditor.backends import SDXL_PIPELINE, SuspectSpec, identify, inspect_model, open_suspect
from auditor.config import GenerationSettings
from auditor.errors import BadInputError

SETTINGS = GenerationSettings(steps=2, guidance_scale=3.0, height=32, width=32)
PROMPTS, SEEDS = ["a red circle on a blue background", "a green square"], [5, 6]


@pytest.fixture(scope="module")
def xl(tiny_xl_pipeline):
    return open_suspect(SuspectSpec(model=str(tiny_xl_pipeline), device="cpu"))


def test_the_folder_is_an_sdxl_pipeline(tiny_xl_pipeline):
    info = inspect_model(SuspectSpec(model=str(tiny_xl_pipeline)))
    assert (info.pipeline, info.is_xl, info.height, info.width) == (SDXL_PIPELINE, True, 32, 32)
    assert info.index == tiny_xl_pipeline / "model_index.json"
    identity = identify(SuspectSpec(model=str(tiny_xl_pipeline)))
    assert identity.kind == "diffusers_folder" and len(identity.digest) == 64


def test_sdxl_generates_through_its_own_pipeline(xl):
    assert type(xl.pipe).__name__ == SDXL_PIPELINE
    images = xl.generate(PROMPTS, SEEDS, SETTINGS)
    assert images.shape == (2, 32, 32, 3) and images.dtype == np.uint8
    assert np.array_equal(images, xl.generate(PROMPTS, SEEDS, SETTINGS))  # per-image CPU generators
    alone = xl.generate(PROMPTS[1:], SEEDS[1:], SETTINGS)
    assert np.array_equal(alone[0], images[1])  # independent of the batch position
    assert xl.describe().backend == "torch"


def test_the_size_conditioning_reaches_the_unet(xl):
    """None means (height, width) and (0, 0), diffusers' defaults, spelled out; other values change pixels."""
    base = xl.generate(PROMPTS, SEEDS, SETTINGS)
    explicit = SETTINGS.model_copy(
        update={"original_size": (32, 32), "crops_coords_top_left": (0, 0), "target_size": (32, 32)}
    )
    assert np.array_equal(xl.generate(PROMPTS, SEEDS, explicit), base)
    for change in ({"original_size": (64, 48)}, {"crops_coords_top_left": (8, 0)}, {"target_size": (16, 16)}):
        moved = xl.generate(PROMPTS, SEEDS, SETTINGS.model_copy(update=change))
        assert not np.array_equal(moved, base), change


def test_sd_pipelines_have_no_size_conditioning(tiny_pipeline):
    sd = open_suspect(SuspectSpec(model=str(tiny_pipeline), device="cpu"))
    assert type(sd.pipe).__name__ == "StableDiffusionPipeline"
    conditioned = SETTINGS.model_copy(update={"original_size": (64, 64), "crops_coords_top_left": (8, 8)})
    assert np.array_equal(sd.generate(PROMPTS, SEEDS, conditioned), sd.generate(PROMPTS, SEEDS, SETTINGS))


def _with_pipeline(src: Path, dst: Path, name: str) -> Path:
    shutil.copytree(src, dst)
    index = json.loads((dst / "model_index.json").read_text())
    index["_class_name"] = name
    (dst / "model_index.json").write_text(json.dumps(index))
    return dst


@pytest.mark.parametrize(
    "name", ["FluxPipeline", "StableDiffusion3Pipeline", "StableDiffusionXLImg2ImgPipeline"]
)
def test_an_unsupported_pipeline_is_refused_naming_the_file(tiny_xl_pipeline, tmp_path, name):
    folder = _with_pipeline(tiny_xl_pipeline, tmp_path / "other", name)
    for call in (inspect_model, open_suspect):
        with pytest.raises(BadInputError) as info:
            call(SuspectSpec(model=str(folder), device="cpu"))
        message = str(info.value)
        assert "\n" not in message
        assert f"{folder / 'model_index.json'}: pipeline {name!r} is not supported" in message
        assert "expected StableDiffusionPipeline or StableDiffusionXLPipeline" in message


def test_an_sdxl_index_without_its_second_encoder_is_refused(tiny_xl_pipeline, tmp_path):
    folder = tmp_path / "half"
    shutil.copytree(tiny_xl_pipeline, folder)
    shutil.rmtree(folder / "text_encoder_2")
    with pytest.raises(
        BadInputError, match="names a StableDiffusionXLPipeline, but 'text_encoder_2/' is missing"
    ):
        open_suspect(SuspectSpec(model=str(folder), device="cpu"))


# ---------------------------------------------------------------- single files and LoRAs


@pytest.fixture(scope="module")
def xl_images(xl):
    return xl.generate(PROMPTS, SEEDS, SETTINGS)


@pytest.fixture(scope="module")
def xl_single_file(tiny_xl_pipeline, tmp_path_factory) -> Path:
    from ldm_layout import pipeline_to_single_file

    return pipeline_to_single_file(tiny_xl_pipeline, tmp_path_factory.mktemp("xl-single") / "xl.safetensors")


def test_an_sdxl_single_file_generates_the_folders_images(xl_single_file, tiny_xl_pipeline, xl_images):
    spec = SuspectSpec(model=str(xl_single_file), config=str(tiny_xl_pipeline), device="cpu")
    generator = open_suspect(spec)
    assert type(generator.pipe).__name__ == SDXL_PIPELINE
    assert np.array_equal(generator.generate(PROMPTS, SEEDS, SETTINGS), xl_images)
    assert inspect_model(spec).is_xl
    identity = identify(spec)
    assert identity.kind == "safetensors_file" and identity.name == "xl.safetensors"


def test_a_single_file_of_the_other_family_is_refused_before_loading(
    xl_single_file, tiny_xl_pipeline, tiny_pipeline, tmp_path
):
    from ldm_layout import pipeline_to_single_file

    sd_file = pipeline_to_single_file(tiny_pipeline, tmp_path / "sd.safetensors")
    for model, config, found, named in (
        (xl_single_file, tiny_pipeline, SDXL_PIPELINE, "StableDiffusionPipeline"),
        (sd_file, tiny_xl_pipeline, "StableDiffusionPipeline", SDXL_PIPELINE),
    ):
        spec = SuspectSpec(model=str(model), config=str(config), device="cpu")
        for call in (inspect_model, open_suspect):
            with pytest.raises(BadInputError) as info:
                call(spec)
            message = str(info.value)
            assert "\n" not in message and message.startswith(f"{model}: a single-file {found} checkpoint")
            assert f"{config / 'model_index.json'} names a {named}" in message


def _xl_unet(folder: Path):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel.from_pretrained(folder / "unet")


def test_an_sdxl_lora_applies_to_its_sdxl_base(tiny_xl_pipeline, tmp_path, xl_images):
    pytest.importorskip("peft", reason="applying a LoRA needs peft (pip install peft)")
    from lora_factory import write_lora

    unet = _xl_unet(tiny_xl_pipeline)
    zero = write_lora(unet, tmp_path / "zero.safetensors", zero_b=True)
    neutral = open_suspect(SuspectSpec(model=str(zero), base=str(tiny_xl_pipeline), device="cpu"))
    assert np.array_equal(neutral.generate(PROMPTS, SEEDS, SETTINGS), xl_images)
    # the second text encoder too: diffusers' text_encoder_2 prefix, applied by load_lora_weights
    from safetensors.torch import load_file, save_file
    from transformers import CLIPTextModelWithProjection

    encoder_2 = CLIPTextModelWithProjection.from_pretrained(tiny_xl_pipeline / "text_encoder_2")
    te2 = write_lora(
        encoder_2,
        tmp_path / "te2.safetensors",
        component="text_encoder_2",
        targets=("self_attn.q_proj", "self_attn.v_proj"),
        scale=2.0,
    )
    unet_part = write_lora(unet, tmp_path / "unet.safetensors")
    both = tmp_path / "both.safetensors"
    save_file(load_file(unet_part) | load_file(te2), str(both))
    active = open_suspect(SuspectSpec(model=str(both), base=str(tiny_xl_pipeline), device="cpu"))
    images = active.generate(PROMPTS, SEEDS, SETTINGS)
    assert not np.array_equal(images, xl_images)
    only_unet = open_suspect(SuspectSpec(model=str(unet_part), base=str(tiny_xl_pipeline), device="cpu"))
    assert not np.array_equal(images, only_unet.generate(PROMPTS, SEEDS, SETTINGS))  # te2 adapted too
    adapted = sum(key.endswith("lora_A.weight") for key in load_file(both))
    assert any(key.startswith("text_encoder_2.") for key in load_file(both))
    assert f"({adapted} layers) on base model" in active.describe().note  # the UNet's and text_encoder_2's
    identity = identify(SuspectSpec(model=str(both), base=str(tiny_xl_pipeline)))
    assert identity.kind == "lora_file" and identity.name == "both.safetensors"


def test_a_lora_of_the_other_family_is_refused_before_loading(tiny_xl_pipeline, tiny_pipeline, tmp_path):
    from diffusers import UNet2DConditionModel
    from lora_factory import write_lora
    from transformers import CLIPTextModelWithProjection

    xl_lora = write_lora(_xl_unet(tiny_xl_pipeline), tmp_path / "xl-unet.safetensors")
    sd_lora = write_lora(
        UNet2DConditionModel.from_pretrained(tiny_pipeline / "unet"), tmp_path / "sd-unet.safetensors"
    )
    encoder_2 = CLIPTextModelWithProjection.from_pretrained(tiny_xl_pipeline / "text_encoder_2")
    te2_lora = write_lora(
        encoder_2, tmp_path / "xl-te2.safetensors", component="text_encoder_2", targets=("q_proj",)
    )
    cases = (
        (xl_lora, tiny_pipeline, "does not fit base model (a StableDiffusionPipeline"),
        (sd_lora, tiny_xl_pipeline, "does not fit base model (a StableDiffusionXLPipeline"),
        (te2_lora, tiny_pipeline, "is for a StableDiffusionXLPipeline"),
    )
    for lora, base, expected in cases:
        spec = SuspectSpec(model=str(lora), base=str(base), device="cpu")
        for call in (inspect_model, open_suspect):
            with pytest.raises(BadInputError) as info:
                call(spec)
            message = str(info.value)
            assert "\n" not in message and lora.name in message and expected in message, message
            assert str(base / "model_index.json") in message


# ---------------------------------------------------------------- bad input at the command line


@pytest.fixture
def no_generation(monkeypatch):
    """Fail the test if anything is regenerated: the refusals below must come first."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model generated images before the bad input was refused")

    monkeypatch.setattr("auditor.workflow.run_audit", refuse)


def _audit(capsys, keys: Path, suspect: Path, references, *extra: str) -> tuple[int, str]:
    from t2i_audit import main

    argv = ["audit", "--keys", str(keys), "--suspect", str(suspect), "--device", "cpu", *extra]
    for ref in references:
        argv += ["--reference", str(ref)]
    code = main(argv)
    return code, capsys.readouterr().err


def test_bad_sdxl_inputs_exit_2_with_one_line_before_any_generation(
    capsys, no_generation, tmp_path, tiny_xl_pipeline, tiny_pipeline, reference_models
):
    from keyset_factory import make_keyset
    from lora_factory import write_lora

    from auditor.keys import save_keyset

    keyset, images = make_keyset(n=2, size=32)
    save_keyset(keyset, images, tmp_path / "keys32")
    small, small_images = make_keyset(n=2, size=16)
    save_keyset(small, small_images, tmp_path / "keys16")

    xl_lora = write_lora(_xl_unet(tiny_xl_pipeline), tmp_path / "xl.safetensors")
    from diffusers import UNet2DConditionModel

    sd_lora = write_lora(
        UNet2DConditionModel.from_pretrained(tiny_pipeline / "unet"), tmp_path / "sd.safetensors"
    )
    flux = _with_pipeline(tiny_xl_pipeline, tmp_path / "flux", "FluxPipeline")
    cases = [
        # an SDXL LoRA on an SD 1.5 base, and the reverse
        (
            tmp_path / "keys32",
            xl_lora,
            ["--base", str(tiny_pipeline)],
            "xl.safetensors does not fit base model",
        ),
        (
            tmp_path / "keys32",
            sd_lora,
            ["--base", str(tiny_xl_pipeline)],
            "sd.safetensors does not fit base model",
        ),
        # an SDXL suspect audited with an SD keyset of another resolution
        (tmp_path / "keys16", tiny_xl_pipeline, [], f"{tmp_path / 'keys16' / 'keys.json'}: SD keys of 16x16"),
        # a folder whose model_index.json names an unsupported pipeline
        (
            tmp_path / "keys32",
            flux,
            [],
            f"{flux / 'model_index.json'}: pipeline 'FluxPipeline' is not supported",
        ),
    ]
    for keys, suspect, extra, expected in cases:
        code, err = _audit(capsys, keys, suspect, reference_models, *extra)
        assert code == 2, err
        assert err.count("\n") == 1 and expected in err, err
    # a reference of an unsupported pipeline is refused the same way, named as a reference
    code, err = _audit(capsys, tmp_path / "keys32", tiny_pipeline, [*reference_models[:4], flux])
    assert code == 2 and err.count("\n") == 1 and "reference 4 (flux)" in err and "FluxPipeline" in err, err


def test_sd_keys_fit_an_sdxl_model_of_their_resolution_and_sdxl_keys_any(tiny_xl_pipeline, tmp_path):
    from keyset_factory import make_keyset

    from auditor.workflow import LoadedKeys, check_keys_fit

    info = inspect_model(SuspectSpec(model=str(tiny_xl_pipeline)))
    same, images = make_keyset(n=1, size=32)
    check_keys_fit(info, LoadedKeys(tmp_path, same, images, None))  # 32 px: the model's own size
    small, images = make_keyset(n=1, size=16)
    with pytest.raises(BadInputError, match="SD keys of 16x16 pixels"):
        check_keys_fit(info, LoadedKeys(tmp_path, small, images, None))
    conditioned = small.model_copy(update={"generation": GenerationSettings(original_size=(16, 16))})
    check_keys_fit(info, LoadedKeys(tmp_path, conditioned, images, None))  # an SDXL keyset: its own size
    check_keys_fit(None, LoadedKeys(tmp_path, small, images, None))  # an HTTP suspect: nothing to read


# ---------------------------------------------------------------- the trainer


def test_sdxl_caption_states_are_the_pipelines(xl):
    from auditor.finetune import encode_xl_captions

    pipe = xl.pipe
    states, pooled = encode_xl_captions(
        [pipe.tokenizer, pipe.tokenizer_2], [pipe.text_encoder, pipe.text_encoder_2], PROMPTS
    )
    with torch.no_grad():
        embeds, _, pooled_embeds, _ = pipe.encode_prompt(PROMPTS, do_classifier_free_guidance=False)
    for i, prompt in enumerate(PROMPTS):
        # to float rounding: the trainer encodes the unique captions (and "") in one batch
        np.testing.assert_allclose(states[prompt].numpy(), embeds[i].numpy(), atol=1e-5)
        np.testing.assert_allclose(pooled[prompt].numpy(), pooled_embeds[i].numpy(), atol=1e-5)
    assert states[""].shape == (16, 96) and pooled[""].shape == (32,)


def test_the_trainer_learns_sdxl_added_conditioning(tiny_xl_pipeline, tmp_path):
    from diffusers import UNet2DConditionModel

    from auditor.finetune import Recipe, finetune

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(4, 32, 32, 3), dtype=np.uint8)
    out = finetune(
        tiny_xl_pipeline,
        images,
        ["a red circle"] * 4,
        Recipe(steps=2, learning_rate=1e-2, batch_size=2),
        tmp_path,
    )
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == SDXL_PIPELINE
    before = UNet2DConditionModel.from_pretrained(tiny_xl_pipeline / "unet")
    after = UNet2DConditionModel.from_pretrained(out / "unet")
    for name in ("add_embedding.linear_1.weight", "conv_in.weight"):
        assert not np.allclose(before.state_dict()[name].numpy(), after.state_dict()[name].numpy()), name
    assert (out / "text_encoder_2").is_dir() and (out / "tokenizer_2").is_dir()
    open_suspect(SuspectSpec(model=str(out), device="cpu")).generate(PROMPTS[:1], SEEDS[:1], SETTINGS)


def test_zoo_build_and_demo_take_the_family(monkeypatch, capsys, tmp_path):
    from auditor.zoo.config import PRESETS, SDXL_PRESETS
    from t2i_audit import main

    seen = []

    def fake_build(config, **kwargs):
        seen.append(config)
        raise BadInputError("stopped here")

    # auditor.demo first: importing it binds build_zoo, which must still be the real one then
    # (else the patch would record the fake as the original and leave it for later tests)
    monkeypatch.setattr("auditor.demo.build_zoo", fake_build)
    monkeypatch.setattr("auditor.zoo.build.build_zoo", fake_build)
    assert main(["zoo", "build", "--family", "sdxl", "--preset", "test", "--cache", str(tmp_path)]) == 2
    assert main(["zoo", "build", "--preset", "test", "--cache", str(tmp_path)]) == 2
    assert main(["demo", "--family", "sdxl", "--out", str(tmp_path / "out"), "--cache", str(tmp_path)]) == 2
    assert seen == [SDXL_PRESETS["test"], PRESETS["test"], SDXL_PRESETS["demo"]]
    assert main(["zoo", "build", "--family", "flux"]) == 2
    assert "--family: invalid choice: 'flux'" in capsys.readouterr().err


def test_keys_selected_from_an_sdxl_source_record_its_size_conditioning(capsys, tmp_path, tiny_xl_pipeline):
    from auditor.keys import load_keyset
    from auditor.zoo.data import caption_space, draw, save_dataset
    from t2i_audit import main

    save_dataset(draw(caption_space()[:3], seed=0, resolution=32), tmp_path / "train")
    argv = ["keys", "select", "--source", str(tiny_xl_pipeline), "--strategy", "random", "--num-keys", "2"]
    argv += ["--train-data", str(tmp_path / "train"), "--device", "cpu", "--steps", "2"]
    assert main([*argv, "--out", str(tmp_path / "keys")]) == 0, capsys.readouterr().err
    keyset, _ = load_keyset(tmp_path / "keys")
    generation = keyset.generation
    assert (generation.original_size, generation.crops_coords_top_left, generation.target_size) == (
        (32, 32),
        (0, 0),
        (32, 32),
    )
    assert main([*argv, "--height", "48", "--width", "32", "--out", str(tmp_path / "keys48")]) == 0
    assert load_keyset(tmp_path / "keys48")[0].generation.original_size == (48, 32)


# ---------------------------------------------------------------- serve and the A1111 API


def test_an_sdxl_model_behind_the_a1111_api_gives_the_folders_images(xl):
    from auditor.backends import HttpGenerator, HttpOptions
    from auditor.backends._a1111 import payload, settings_values
    from auditor.serve import start_server, stop_server

    server, thread = start_server(xl, host="127.0.0.1", port=0)
    try:
        client = HttpGenerator(server.url, HttpOptions(decoys_per_key=0, timeout_s=60))
        plain = SETTINGS.model_copy(update={"original_size": (32, 32), "target_size": (32, 32)})
        assert np.array_equal(client.generate(PROMPTS, SEEDS, plain), xl.generate(PROMPTS, SEEDS, plain))
        cropped = SETTINGS.model_copy(update={"crops_coords_top_left": (8, 0)})
        assert payload("p", 1, cropped)["override_settings"] == {"sdxl_crop_top": 8, "sdxl_crop_left": 0}
        got = client.generate(PROMPTS, SEEDS, cropped)
        assert np.array_equal(got, xl.generate(PROMPTS, SEEDS, cropped))
        assert not np.array_equal(got, xl.generate(PROMPTS, SEEDS, SETTINGS))
        sent = server.served
        resized = SETTINGS.model_copy(update={"original_size": (64, 64)})
        with pytest.raises(
            BadInputError, match="conditions SDXL on original_size = \\(height, width\\) = 32x32"
        ):
            client.generate(PROMPTS, SEEDS, resized)
        assert server.served == sent  # refused before the first query
    finally:
        stop_server(server, thread)
    assert "override_settings" not in payload("p", 1, SETTINGS)
    # what serve reads: A1111's size conditioning is the request's size, the crop comes from its options
    defaults = SETTINGS.model_copy(update={"original_size": (16, 16)}).model_dump()
    values = settings_values(
        {"width": 32, "height": 32, "override_settings": {"sdxl_crop_left": 4}}, defaults, False
    )
    assert (values["original_size"], values["crops_coords_top_left"]) == (None, (0, 4))


def test_the_a1111_conditioning_check_runs_before_the_audit_starts():
    from auditor.backends._diffusers import check_spec_settings

    resized = SETTINGS.model_copy(update={"original_size": (64, 64)})
    spec = SuspectSpec(model="http://127.0.0.1:9/x")  # nothing listens: refused without a request
    with pytest.raises(BadInputError, match="http://127.0.0.1:9/x: generation settings: the A1111"):
        check_spec_settings(spec, resized)
    check_spec_settings(spec, SETTINGS)  # what a request can carry passes


# ---------------------------------------------------------------- hostile pipeline files


@pytest.mark.parametrize(
    ("where", "field", "value", "text"),
    [
        ("model_index.json", "_class_name", ["StableDiffusionXLPipeline"], "is not supported"),
        ("model_index.json", "_class_name", {"a": 1}, "is not supported"),
        ("unet/config.json", "sample_size", {"h": 4}, "sample_size must be a positive integer"),
        ("unet/config.json", "sample_size", -4, "sample_size must be a positive integer"),
        ("unet/config.json", "sample_size", [4, 4, 4], "sample_size must be a positive integer"),
        ("unet/config.json", "sample_size", True, "sample_size must be a positive integer"),
        ("unet/config.json", "sample_size", 10**9, "sample_size must be a positive integer"),
        ("vae/config.json", "block_out_channels", list(range(3000)), "block_out_channels must be a list"),
        ("vae/config.json", "block_out_channels", "abc", "block_out_channels must be a list"),
        ("unet/config.json", "sample_size", 9000, "exceeds 16384 pixels a side"),
    ],
)
def test_edited_pipeline_files_are_refused_in_one_line(tiny_xl_pipeline, tmp_path, where, field, value, text):
    folder = tmp_path / "edited"
    shutil.copytree(tiny_xl_pipeline, folder)
    config = json.loads((folder / where).read_text())
    config[field] = value
    (folder / where).write_text(json.dumps(config))
    with pytest.raises(BadInputError) as info:
        inspect_model(SuspectSpec(model=str(folder), device="cpu"))
    assert text in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("shape", [["x", "y"], [{"a": 1}, 2], [-1, 4], [True, 2], [1] * 9])
def test_a_safetensors_header_with_a_bad_shape_is_malformed(tmp_path, shape):
    import struct

    from auditor.weights import read_safetensors_header

    header = json.dumps({"w": {"dtype": "F32", "shape": shape, "data_offsets": [0, 4]}}).encode()
    path = tmp_path / "bad.safetensors"
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 4)
    with pytest.raises(BadInputError, match="malformed safetensors file \\(bad entry for tensor 'w'\\)"):
        read_safetensors_header(path)

"""The kind table and the dialect table, and the generator checks every row of both runs.

In the manner of diffusers' tester mixin: each suspect kind (`KIND_TABLE`) and each HTTP
dialect (`DIALECTS`) has one case here, a spec of the tiny pipeline in that form (a folder, a
single-file checkpoint, a zero LoRA on its base, an exported bundle, the folder served by
`t2i-audit serve` as a1111 and generic, and by a fake ComfyUI server), and the same checks
run on every case: detection, identity and inspection, uint8 images of the asked shape,
seeded determinism, seed sensitivity, the folder's images, and refusal of settings the case
cannot run or carry before any generation. A new row without a case fails
`test_every_row_has_a_case`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
import pytest

from auditor.backends import (
    DIALECTS,
    KIND_TABLE,
    KINDS,
    Generator,
    HttpApi,
    HttpOptions,
    PipelineInfo,
    SuspectSpec,
    check_settings,
    detect_kind,
    identify,
    inspect_model,
    open_suspect,
)
from auditor.config import GenerationSettings
from auditor.errors import BadInputError

SETTINGS = GenerationSettings(steps=2, height=32, width=32, guidance_scale=3.0)
PROMPTS, SEEDS = ["a red circle on a blue background", "a green square"], [5, 6]
FAST_HTTP = {"decoys_per_key": 0, "timeout_s": 60, "retries": 0, "poll_interval_s": 0.01}


@dataclass(frozen=True)
class Case:
    kind: str
    dialect: str | None  # the HTTP dialect, for kind http
    bad: GenerationSettings | None  # settings this case refuses before generating (None: refuses none)
    tolerance: int  # off the folder's images by at most this, per pixel
    skip: str | None = None


def _no_onnx() -> str | None:
    for module in ("onnx", "onnxruntime"):
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed (pip install 't2i-auditor[onnx]'): no bundle to run"
    return None


def _no_peft() -> str | None:
    return None if importlib.util.find_spec("peft") else "applying a LoRA needs peft (pip install peft)"


TOO_MANY_STEPS = SETTINGS.model_copy(update={"steps": 1000})  # DDIM past its 1000 training timesteps
CASES = {
    "diffusers_folder": Case("diffusers_folder", None, TOO_MANY_STEPS, 0),
    "safetensors_file": Case("safetensors_file", None, TOO_MANY_STEPS, 0),
    "lora_file": Case("lora_file", None, TOO_MANY_STEPS, 0, skip=_no_peft()),
    "engine_bundle": Case("engine_bundle", None, TOO_MANY_STEPS, 2, skip=_no_onnx()),
    # servers generate one image per request: off a batch of two by float rounding, at most 1/255
    "http-a1111": Case("http", "a1111", SETTINGS.model_copy(update={"original_size": (64, 64)}), 1),
    # the generic API carries prompt, seed and steps only, and refuses no setting
    "http-generic": Case("http", "generic", None, 1),
    "http-comfyui": Case("http", "comfyui", SETTINGS.model_copy(update={"scheduler": "pndm"}), 1),
}


def test_every_row_has_a_case():
    assert {case.kind for case in CASES.values()} == set(KINDS) == {kind.name for kind in KIND_TABLE}
    assert {case.dialect for case in CASES.values()} - {None} == set(DIALECTS) == set(get_args(HttpApi))
    assert len(KIND_TABLE) == len(KINDS) and all(name == d.name for name, d in DIALECTS.items())


@pytest.fixture(scope="module")
def folder_images(tiny_pipeline) -> np.ndarray:
    from auditor.backends import TorchGenerator

    return TorchGenerator(tiny_pipeline, device="cpu").generate(PROMPTS, SEEDS, SETTINGS)


@pytest.fixture(scope="module")
def servers(tiny_pipeline, tmp_path_factory):
    """`t2i-audit serve` and a fake ComfyUI server, both over the tiny pipeline."""
    from fake_comfyui import FakeComfyUI, write_template

    from auditor.backends import TorchGenerator
    from auditor.serve import start_server, stop_server

    torch_gen = TorchGenerator(tiny_pipeline, device="cpu", batch_size=1)
    server, thread = start_server(torch_gen, host="127.0.0.1", port=0)
    template = write_template(tmp_path_factory.mktemp("comfyui") / "workflow.json")
    comfy = FakeComfyUI(
        render=lambda prompt, seed, settings: torch_gen.generate([prompt], [seed], settings)[0]
    )
    with comfy:
        try:
            yield {"serve": server.url, "comfyui": comfy.url, "template": template}
        finally:
            stop_server(server, thread)


def _spec(name: str, case: Case, tiny: Path, tmp: Path, servers: dict) -> SuspectSpec:
    cpu = {"device": "cpu", "batch_size": 16}
    if case.kind == "diffusers_folder":
        return SuspectSpec(model=str(tiny), **cpu)
    if case.kind == "safetensors_file":
        from ldm_layout import pipeline_to_single_file

        return SuspectSpec(
            model=str(pipeline_to_single_file(tiny, tmp / "tiny.safetensors")), config=str(tiny), **cpu
        )
    if case.kind == "lora_file":
        from diffusers import UNet2DConditionModel
        from lora_factory import write_lora

        unet = UNet2DConditionModel.from_pretrained(tiny / "unet")
        return SuspectSpec(
            model=str(write_lora(unet, tmp / "zero.safetensors", zero_b=True)), base=str(tiny), **cpu
        )
    if case.kind == "engine_bundle":
        from export.testing import exported_bundle

        return SuspectSpec(model=str(exported_bundle(tiny, tmp)), backend="onnx", **cpu)
    options = {"a1111": {}, "generic": {"api": "generic"}}.get(case.dialect or "")
    if options is not None:
        path = "/generate" if case.dialect == "generic" else ""
        return SuspectSpec(model=servers["serve"] + path, http=HttpOptions(**options, **FAST_HTTP))
    return SuspectSpec(
        model=servers["comfyui"] + "/ok",
        http=HttpOptions(api="comfyui", workflow=servers["template"], **FAST_HTTP),
    )


_OPEN: dict[str, tuple[SuspectSpec, Generator]] = {}


@pytest.fixture(params=sorted(CASES))
def case(
    request, tiny_pipeline, tmp_path_factory, servers
) -> tuple[Case, SuspectSpec, Callable[[], Generator]]:
    name = request.param
    case = CASES[name]
    if case.skip:
        pytest.skip(case.skip)

    def opened() -> Generator:
        if name not in _OPEN:
            spec = _spec(name, case, tiny_pipeline, tmp_path_factory.mktemp(name), servers)
            _OPEN[name] = (spec, open_suspect(spec))
        return _OPEN[name][1]

    opened()
    return case, _OPEN[name][0], opened


def test_detection_identity_and_inspection(case):
    case, spec, _ = case
    assert detect_kind(spec.model) == case.kind
    identity, info = identify(spec), inspect_model(spec)
    if case.kind == "http":  # an endpoint: pinned by its transcript, its pipeline unknowable
        assert identity.digest is None and identity.kind == "http_endpoint" and info is None
    else:
        assert identity.digest and isinstance(info, PipelineInfo) and (info.height, info.width) == (32, 32)


def test_images_are_uint8_of_the_asked_shape_and_seeded(case):
    _, _, opened = case
    generator = opened()
    assert isinstance(generator, Generator)
    first = generator.generate(PROMPTS, SEEDS, SETTINGS)
    assert first.shape == (2, 32, 32, 3) and first.dtype == np.uint8 and first.std() > 0
    assert np.array_equal(first, generator.generate(PROMPTS, SEEDS, SETTINGS))
    other = generator.generate(PROMPTS[:1] * 2, [100, 101], SETTINGS)
    assert np.abs(other[0].astype(int) - other[1].astype(int)).max() > 8


def test_images_are_the_folders(case, folder_images):
    case, _, opened = case
    images = opened().generate(PROMPTS, SEEDS, SETTINGS)
    assert np.abs(images.astype(int) - folder_images.astype(int)).max() <= case.tolerance


def test_settings_it_cannot_run_or_carry_are_refused_before_generating(case):
    case, spec, _ = case
    check_settings(spec, SETTINGS)
    if case.bad is None:
        pytest.skip(
            f"the {case.dialect or case.kind} {'dialect' if case.dialect else 'kind'} refuses no setting"
        )
    with pytest.raises(BadInputError) as info:
        check_settings(spec, case.bad)
    assert "\n" not in str(info.value)

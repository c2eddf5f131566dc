"""ComfyUI endpoints (`http.api: comfyui`): the workflow template, a full audit through a fake
server, and every hostile reply the prompt API can give, bounded like any HTTP suspect's."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from fake_comfyui import MODES, TEMPLATE, FakeComfyUI, write_template

from auditor.backends import HttpGenerator, HttpOptions, SuspectSpec, check_settings
from auditor.config import GenerationSettings
from auditor.errors import BadInputError, TransientError
from t2i_audit import main

SETTINGS = GenerationSettings(steps=2, height=32, width=32)
FAST = {"timeout_s": 2.0, "retries": 1, "backoff_s": 0, "decoys_per_key": 0, "max_response_bytes": 65536}


@pytest.fixture()
def comfy():
    with FakeComfyUI() as server:
        yield server


@pytest.fixture()
def template(tmp_path) -> str:
    return write_template(tmp_path / "workflow.json")


def _options(template: str, **values) -> HttpOptions:
    return HttpOptions(api="comfyui", workflow=template, poll_interval_s=0.01, **(FAST | values))


# ---------------------------------------------------------------- the template


def test_placeholders_become_typed_values(comfy, template):
    gen = HttpGenerator(f"{comfy.url}/ok", _options(template, stealth_seed=3))
    settings = SETTINGS.model_copy(update={"guidance_scale": 4.5, "scheduler": "euler_a"})
    images = gen.generate(["a red circle"], [11], settings)
    assert images.shape == (1, 32, 32, 3) and images.dtype == np.uint8
    graph = comfy.graphs[0]
    sampler, latent = graph["3"]["inputs"], graph["5"]["inputs"]
    assert (sampler["seed"], sampler["steps"], sampler["cfg"]) == (11, 2, 4.5)
    assert sampler["sampler_name"] == "euler_ancestral" and sampler["scheduler"] == "normal"
    assert (latent["width"], latent["height"], latent["batch_size"]) == (32, 32, 1)
    assert graph["6"]["inputs"]["text"] == "a red circle" and graph["7"]["inputs"]["text"] == ""
    assert graph["4"] == TEMPLATE["4"]  # what has no placeholder is sent as the template has it
    # one query: submit, a poll that finds it running, a poll that finds it done, the image
    assert [endpoint for _, endpoint in comfy.calls] == ["prompt", "history", "history", "view"]
    assert gen.describe().versions["workflow_sha256"] == gen.transcript_document("x")["workflow_sha256"]


@pytest.mark.parametrize(
    ("drop", "settings", "missing"),
    [
        (("steps",), SETTINGS, "{{steps}} (2)"),
        (("seed", "sampler"), SETTINGS, "{{seed}}, {{sampler}}"),
        (("width",), SETTINGS, "{{width}} (32)"),
        (("guidance",), SETTINGS, "{{guidance}} (3.0)"),
        (
            ("negative_prompt",),
            SETTINGS.model_copy(update={"negative_prompt": "blurry"}),
            "{{negative_prompt}}",
        ),
        ((), SETTINGS.model_copy(update={"original_size": (64, 64)}), "{{original_height}} (64)"),
        ((), SETTINGS.model_copy(update={"eta": 0.5}), "{{eta}} (0.5)"),
    ],
)
def test_a_setting_the_template_cannot_carry_is_refused_before_any_query(
    comfy, tmp_path, drop, settings, missing
):
    path = write_template(tmp_path / "partial.json", drop=drop)
    spec = SuspectSpec(model=f"{comfy.url}/ok", http=_options(path))
    with pytest.raises(BadInputError) as info:
        check_settings(spec, settings)
    text = str(info.value)
    assert "\n" not in text and "partial.json" in text and missing in text, text
    with pytest.raises(BadInputError, match="placeholder"):
        HttpGenerator(f"{comfy.url}/ok", _options(path)).generate(["a"], [1], settings)
    assert comfy.calls == []


def test_a_template_without_the_negative_prompt_serves_settings_without_one(comfy, tmp_path):
    path = write_template(tmp_path / "plain.json", drop=("negative_prompt",))
    check_settings(SuspectSpec(model=comfy.url, http=_options(path)), SETTINGS)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "ComfyUI workflow template not found"),
        ("[1, 2]", "expected an API-format workflow"),
        ('{"3": {"inputs": {}}}', "node '3' is not {class_type, inputs}"),
        ('{"3": {"class_type": "K", "inputs": {"text": "a {{prompt}}"}}}', "a placeholder must be a whole"),
        ('{"3": {"class_type": "K", "inputs": {"text": "{{promt}}"}}}', "unknown placeholder {{promt}}"),
        ('{"3": {"class_type": "K", "inputs": {}}, "3": {}}', "duplicate"),
    ],
)
def test_a_bad_template_is_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "workflow.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(BadInputError, match="workflow.json") as info:
        HttpGenerator("http://127.0.0.1:9", _options(str(path)))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_comfyui_needs_a_template_and_a_sampler_it_has(template):
    with pytest.raises(BadInputError, match="http.workflow: api comfyui needs a workflow template"):
        HttpGenerator("http://127.0.0.1:9", HttpOptions(api="comfyui"))
    spec = SuspectSpec(model="http://127.0.0.1:9", http=_options(template))
    with pytest.raises(BadInputError, match="scheduler pndm has no ComfyUI sampler"):
        check_settings(spec, SETTINGS.model_copy(update={"scheduler": "pndm"}))
    named = SuspectSpec(model="http://127.0.0.1:9", http=_options(template, sampler_name="ipndm"))
    check_settings(named, SETTINGS.model_copy(update={"scheduler": "pndm"}))


# ---------------------------------------------------------------- hostile replies


def _outcome(url: str, template: str, **values) -> tuple[str, str, float]:
    start = time.monotonic()
    try:
        HttpGenerator(url, _options(template, **values)).generate(["a red circle"], [5], SETTINGS)
        outcome, message = "ok", ""
    except TransientError as exc:
        outcome, message = "transient", str(exc)
    except BadInputError as exc:
        outcome, message = "bad", str(exc)
    return outcome, message, time.monotonic() - start


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_hostile_reply_is_bounded_and_classified(comfy, template, mode):
    outcome, message, seconds = _outcome(f"{comfy.url}/{mode}", template, timeout_s=0.5)
    assert (outcome, mode) == (MODES[mode], mode), message
    assert "\n" not in message and seconds < 5, (message, seconds)
    expected = {
        "traversal": "not a plain file name",
        "subfolder_traversal": "not a plain one",
        "missing_outputs": "hold 0 images",
        "two_images": "hold 2 images",
        "history_huge": "max_response_bytes",
        "prompt_bad_json": "malformed JSON",
        "prompt_id_path": "'prompt_id' token",
        "node_errors": "refused nodes 4",
        "exec_error": "KSampler: RuntimeError",
        "never": "not finished 0.5 s after it was queued",
        "view_wrong_size": "8x8, requested 32x32",
        "view_not_png": "not a PNG",
        "odd_type": "expected output or temp",
    }.get(mode, "")
    assert expected in message, message
    if mode in ("traversal", "subfolder_traversal", "odd_type"):
        assert "view" not in {endpoint for m, endpoint in comfy.calls if m == mode}, "fetched a refused path"


def test_budget_counts_every_request_of_a_comfyui_query(comfy, template):
    tight = HttpGenerator(f"{comfy.url}/ok", _options(template, max_queries=5))
    with pytest.raises(BadInputError, match="cannot cover this audit .* at least 3 requests each"):
        tight.generate(["a", "b"], [1, 2], SETTINGS)
    assert comfy.calls == []
    spent = HttpGenerator(f"{comfy.url}/never", _options(template, max_queries=6, timeout_s=30))
    with pytest.raises(BadInputError, match="max_queries = 6 exhausted"):
        spent.generate(["a"], [1], SETTINGS)
    assert spent.requests == 6


# ---------------------------------------------------------------- a full audit


def _job(path: Path, keys_dir, suspects: str) -> Path:
    path.write_text(
        f"keys: {keys_dir}\nallow_inconclusive: true\nthresholds: {{batch_size: 1, seeds_per_key: 1}}\n"
        f"generation: {{steps: 2}}\nsuspects:\n{suspects}"
    )
    return path


def test_a_comfyui_suspect_audits_like_the_folder(tiny_pipeline, keys_dir, tmp_path, capsys):
    from auditor.backends import TorchGenerator

    torch_gen = TorchGenerator(tiny_pipeline, device="cpu", batch_size=1)

    def render(prompt: str, seed: int, settings: GenerationSettings) -> np.ndarray:
        return torch_gen.generate([prompt], [seed], settings)[0]

    write_template(tmp_path / "workflow.json")
    with FakeComfyUI(render=render) as comfy:
        http = "{api: comfyui, workflow: workflow.json, decoys_per_key: 2, stealth_seed: 7, poll_interval_s: 0.01}"
        job = _job(
            tmp_path / "job.yaml",
            keys_dir,
            f"  - name: folder\n    model: {tiny_pipeline}\n"
            f"  - name: comfy\n    model: {comfy.url}/err500_once\n    http: {http}\n",
        )
        rc = main(["--format", "json", "batch", str(job), "--out", str(tmp_path / "out")])
        summary = json.loads(capsys.readouterr().out)
        assert rc == 0, summary
        folder = json.loads((tmp_path / "out/reports/folder.json").read_text())
        web = json.loads((tmp_path / "out/reports/comfy.json").read_text())
        assert [k["distances"] for k in web["results"]] == [k["distances"] for k in folder["results"]]
        assert web["backend"]["versions"]["api"] == "comfyui"
        assert web["backend"]["versions"]["queries"] == "9 (3 keys + 6 decoys)"
        transcript = json.loads((tmp_path / "out/transcripts/comfy.json").read_text())
        assert web["suspect"]["digest"] == transcript["transcript_sha256"]
        assert transcript["workflow_sha256"] == web["backend"]["versions"]["workflow_sha256"]
        assert [q["role"] for q in transcript["queries"]].count("decoy") == 6
        assert {q["sha256"] for q in transcript["queries"]} <= comfy.served
        assert all(q["attempts"] >= 4 for q in transcript["queries"])  # 500, submit, 2 polls, view
        key_prompts = {k["prompt"] for k in folder["results"]}
        roles = [p in key_prompts for p, _ in comfy.queried]
        assert sum(roles) == 3 and roles != [True] * 3 + [False] * 6  # keys hidden among decoys


def test_a_template_missing_a_placeholder_fails_the_job_before_any_request(keys_dir, tmp_path, capsys):
    write_template(tmp_path / "nosteps.json", drop=("steps",))
    with FakeComfyUI() as comfy:
        job = _job(
            tmp_path / "job.yaml",
            keys_dir,
            f"  - name: comfy\n    model: {comfy.url}/ok\n    http: {{api: comfyui, workflow: nosteps.json}}\n",
        )
        assert main(["--format", "json", "batch", str(job), "--out", str(tmp_path / "out")]) == 2
        row = json.loads(capsys.readouterr().out)["suspects"][0]
        assert row["exit_code"] == 2 and "nosteps.json has no {{steps}} (2) placeholder" in row["error"]
        assert comfy.calls == []

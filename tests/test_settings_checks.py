"""Settings that would crash late are refused early: against the model's scheduler, and when parsed."""

from __future__ import annotations

import json
import time

import pytest

from auditor.backends import SuspectSpec
from auditor.backends._diffusers import check_folder_settings, check_spec_settings
from auditor.config import GenerationSettings
from auditor.errors import BadInputError
from t2i_audit import main


def _settings(**values) -> GenerationSettings:
    return GenerationSettings(height=32, width=32, **values)


def test_the_scheduler_is_run_dry_before_any_generation(tiny_pipeline):
    """DDIM with steps_offset 1 indexes past its 1000 training timesteps at 1000 steps."""
    from auditor.backends import TorchGenerator

    generator = TorchGenerator(tiny_pipeline, device="cpu", batch_size=1)
    start = time.monotonic()
    with pytest.raises(BadInputError, match="steps 1000 with the ddim scheduler reach timestep 1000") as info:
        generator.generate(["a red circle"], [1], _settings(steps=1000))
    assert time.monotonic() - start < 5  # refused, not generated: 1000 steps would take minutes here
    assert "\n" not in str(info.value) and tiny_pipeline.name in str(info.value)


@pytest.mark.parametrize(
    ("scheduler", "steps", "ok"),
    [
        ("ddim", 999, True),
        ("ddim", 1000, False),
        ("ddpm", 1000, False),
        ("pndm", 2, False),  # PNDM's warm-up needs more steps
        ("pndm", 1000, False),
        ("pndm", 50, True),
        ("euler", 1000, True),
        ("euler_a", 1, True),
        ("dpm++", 3, True),
    ],
)
def test_settings_against_a_folders_scheduler(tiny_pipeline, scheduler, steps, ok):
    settings = _settings(steps=steps, scheduler=scheduler)
    if ok:
        check_folder_settings(tiny_pipeline, settings)
        check_spec_settings(SuspectSpec(model=str(tiny_pipeline)), settings)
    else:
        with pytest.raises(BadInputError, match=f"steps {steps} with the {scheduler} scheduler") as info:
            check_spec_settings(SuspectSpec(model=str(tiny_pipeline)), settings)
        assert "\n" not in str(info.value)


def test_spec_settings_use_the_folder_the_scheduler_comes_from(tiny_pipeline, tmp_path):
    bad = _settings(steps=1000)
    for spec in (
        SuspectSpec(
            model=str(tmp_path / "x.safetensors"), kind="safetensors_file", config=str(tiny_pipeline)
        ),
        SuspectSpec(model=str(tmp_path / "x.safetensors"), kind="lora_file", base=str(tiny_pipeline)),
    ):
        with pytest.raises(BadInputError, match="x.safetensors: generation settings"):
            check_spec_settings(spec, bad)
    check_spec_settings(SuspectSpec(model="http://127.0.0.1:1/"), bad)  # the server's scheduler


def test_a_batch_suspect_with_impossible_steps_is_bad_input_not_a_crash(
    tiny_pipeline, keys_dir, tmp_path, capsys
):
    job = tmp_path / "job.yaml"
    job.write_text(
        f"keys: {keys_dir}\nallow_inconclusive: true\ngeneration: {{steps: 2}}\nsuspects:\n"
        f"  - {{name: many, model: {tiny_pipeline}, generation: {{steps: 1000}}}}\n"
    )
    assert main(["--format", "json", "batch", str(job), "--out", str(tmp_path / "out")]) == 2
    row = json.loads(capsys.readouterr().out)["suspects"][0]
    assert row["exit_code"] == 2 and "steps 1000 with the ddim scheduler" in row["error"]
    record = json.loads((tmp_path / "out/errors/many.json").read_text())
    assert record["traceback"] is None  # foreseen, not "unexpected"


@pytest.mark.parametrize(
    ("argv", "text"),
    [
        (["audit", "M", "--keys", "K", "--alpha", "1.5"], "--alpha"),
        (["audit", "M", "--keys", "K", "--alpha", "nan"], "--alpha"),
        (["audit", "M", "--keys", "K", "--alpha", "0"], "--alpha"),
        (["audit", "M", "--keys", "K", "--device", "tpu:7"], "--device"),
        (["audit", "M", "--keys", "K", "--device", "cuda:-1"], "--device"),
        (["--threads", "-1", "audit", "M", "--keys", "K"], "--threads"),
        (["audit", "M", "--keys", "K", "--threads", "0"], "--threads"),
        (["serve", "M", "--device", "cuda:x"], "--device"),
        (["audit", "M", "--keys", "K", "--batch-size", "0"], "--batch-size"),
    ],
)
def test_alpha_device_and_threads_are_refused_when_parsed(argv, text, capsys, monkeypatch):
    """Refused by the parser, before any file is opened (M and K do not exist)."""
    import t2i_audit.audit as audit_command

    monkeypatch.setattr(audit_command, "cmd_audit", lambda *a: pytest.fail("the command ran"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text in err[0], err

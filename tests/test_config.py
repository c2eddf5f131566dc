import pytest
from pydantic import ValidationError

from auditor.config import AuditConfig, GenerationSettings
from auditor.selection import SelectionConfig


def test_paper_defaults():
    config = AuditConfig()
    assert config.delta0 == 0.15
    assert SelectionConfig().num_keys == 30


@pytest.mark.parametrize(
    "values",
    [
        {"delta0": 0},
        {"delta0": 1.5},
        {"seeds_per_key": 0},
        {"unknown": 1},
        {"audit_nonce": "abc"},
        {"min_references": 2},
    ],
)
def test_audit_config_rejects(values):
    with pytest.raises(ValidationError):
        AuditConfig(**values)


@pytest.mark.parametrize(
    "values", [{"steps": 0}, {"height": 30}, {"scheduler": "magic"}, {"guidance_scale": -1}]
)
def test_generation_settings_reject(values):
    with pytest.raises(ValidationError):
        GenerationSettings(**values)


def test_configs_are_frozen():
    with pytest.raises(ValidationError):
        AuditConfig().delta0 = 0.2  # type: ignore[misc]


def test_selection_seeds_distinct():
    with pytest.raises(ValidationError):
        SelectionConfig(seeds=(1, 1))


def test_the_audit_defaults_of_the_model_level_test():
    config = AuditConfig()
    assert (config.seeds_per_key, config.min_references, config.audit_nonce) == (4, 5, None)


def test_sdxl_size_conditioning_is_validated():
    settings = GenerationSettings(original_size=(64, 48), crops_coords_top_left=(0, 8), target_size=(32, 32))
    assert settings.size_conditioning(32, 32) == ((64, 48), (0, 8), (32, 32))
    assert GenerationSettings().size_conditioning(16, 24) == ((16, 24), (0, 0), (16, 24))
    for bad in ({"original_size": (0, 32)}, {"crops_coords_top_left": (-1, 0)}, {"target_size": (32,)}):
        with pytest.raises(ValidationError):
            GenerationSettings(**bad)


def test_size_conditioning_is_left_out_of_dumps_while_unset():
    """Settings written before SDXL support dump (and so hash) exactly as they did: the audit token,
    keyset digests, reference caches and golden reports of SD audits do not move."""
    from auditor.fileio import canonical_json, sha256_bytes

    v1 = {
        "steps": 20,
        "guidance_scale": 3.0,
        "scheduler": "ddim",
        "height": 32,
        "width": 32,
        "eta": 0.0,
        "negative_prompt": "",
    }
    settings = GenerationSettings(height=32, width=32)
    assert settings.model_dump(mode="json") == v1
    assert sha256_bytes(canonical_json(settings.model_dump(mode="json"))) == sha256_bytes(canonical_json(v1))
    assert GenerationSettings.model_validate(v1) == settings
    conditioned = GenerationSettings(height=32, width=32, original_size=(32, 32))
    assert conditioned.model_dump(mode="json") == v1 | {"original_size": [32, 32]}
    assert GenerationSettings.model_validate_json(conditioned.model_dump_json()) == conditioned

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

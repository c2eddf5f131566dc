"""Zoo artifact caching: content-addressed, resumable, never half-written."""

import pytest

from auditor.progress import Reporter
from auditor.zoo.build import _Artifacts, config_digest
from auditor.zoo.config import PRESETS, StageSpec, SuspectSpec, ZooConfig


def test_artifact_built_once_then_cached(tmp_path):
    store = _Artifacts(tmp_path, Reporter())
    calls = []

    def build(out):
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x")

    first, digest = store.get("base", {"steps": 3}, build)
    again, digest2 = store.get("base", {"steps": 3}, build)
    assert first == again and digest == digest2 and len(calls) == 1
    assert (first / "weights.bin").read_bytes() == b"x"
    other, _ = store.get("base", {"steps": 4}, build)
    assert other != first and len(calls) == 2


def test_failed_build_leaves_nothing_and_stale_temp_dirs_are_cleared(tmp_path):
    store = _Artifacts(tmp_path, Reporter())

    def crash(out):
        (out / "partial.bin").write_bytes(b"half")
        raise RuntimeError("killed midway")

    with pytest.raises(RuntimeError):
        store.get("source", {"a": 1}, crash)
    assert list(store.root.iterdir()) == []

    # A build killed with SIGKILL leaves its temp folder; the next build removes it.
    digest = config_digest({"a": 1})
    stale = store.root / f".source-{digest[:16]}.tmp-999999999"
    stale.mkdir()
    path, _ = store.get("source", {"a": 1}, lambda out: (out / "ok").write_text("1"))
    assert not stale.exists() and (path / "ok").exists()


def test_presets_have_distinct_digests_and_paper_roles():
    assert config_digest(PRESETS["demo"]) != config_digest(PRESETS["test"])
    demo = PRESETS["demo"]
    assert {s.rho for s in demo.suspects} == {1.0, 0.3, 0.0}
    assert all(r.rho == 0 for r in demo.references)


def test_the_sd_presets_hash_as_before_sdxl():
    """The SD world's presets (and so the caches named after them) are unchanged by the SDXL family.
    The demo's digest changed once on purpose since: its fine-tunes went from 3,000 to 2,000 steps
    (docs/zoo.md)."""
    assert (
        config_digest(PRESETS["demo"]) == "5dcf6e5dfe6cfbcba105181b4390dfe4c250ec9eb1d336a4304e839f05567a5e"
    )
    assert (
        config_digest(PRESETS["test"]) == "f57462ca05dbdeb9931aa64031ff721b5db07d7f4d3ce95f59d2d59799f696d4"
    )


def test_sdxl_presets_are_the_sd_roles_with_sdxl_models():
    from auditor.zoo.config import MIN_REFERENCES, SDXL_PRESETS, preset

    for name, config in SDXL_PRESETS.items():
        assert preset("sdxl", name) is config and config.family == "sdxl"
        assert config.model_copy(update={"family": "sd"}) == PRESETS[name]
        assert config_digest(config) != config_digest(PRESETS[name])
        assert len(config.references) >= MIN_REFERENCES and all(r.rho == 0 for r in config.references)
    assert SDXL_PRESETS["test"].resolution < SDXL_PRESETS["demo"].resolution
    with pytest.raises(KeyError):
        preset("sd3", "demo")


_MICRO_STAGE = StageSpec(steps=2, batch_size=2, lr=1e-3)


def _micro_zoo(**changes) -> ZooConfig:
    """Every stage two steps at 16 px, and one suspect that copies the source: a zoo in seconds."""
    return ZooConfig(
        resolution=16,
        public_draws_per_caption=1,
        private_samples=4,
        vae=_MICRO_STAGE,
        base=_MICRO_STAGE,
        source=_MICRO_STAGE,
        suspects=(SuspectSpec(name="copy", rho=1.0, n_samples=4, train=_MICRO_STAGE),),
        generation=PRESETS["test"].generation.model_copy(update={"steps": 2}),
    ).model_copy(update=changes)


def test_a_micro_sdxl_zoo_saves_sdxl_pipelines(tmp_path):
    """Every stage of the SDXL family, a few steps each: base and source trained with the added
    conditioning, a suspect fine-tuned by the one trainer on the source's generations."""
    import json

    from auditor.zoo.build import build_zoo

    config = _micro_zoo(family="sdxl")
    index = build_zoo(config, cache_dir=tmp_path)
    for folder in (index.base, index.source, index.suspects["copy"]):
        assert (
            json.loads(open(f"{folder}/model_index.json").read())["_class_name"]
            == "StableDiffusionXLPipeline"
        )
    sd_index = build_zoo(config.model_copy(update={"family": "sd", "suspects": ()}), cache_dir=tmp_path)
    assert sd_index.base != index.base  # the families never share a base (the VAE they do share)
    vaes = sorted(p.name for p in (tmp_path / "artifacts").iterdir() if p.name.startswith("vae-"))
    assert len(vaes) == 1
    # no saved component records the folder it was loaded from: a digest must not depend on the cache's place
    configs = list((tmp_path / "artifacts").rglob("config.json"))
    assert len(configs) > 10 and not [c for c in configs if str(tmp_path) in c.read_text()]


def test_the_lora_world_puts_attention_at_every_level_and_hashes_apart():
    """`unet_attention="every"` changes the base (its own cache key); the default keeps every digest."""
    from auditor.zoo.models import make_unet

    every = PRESETS["test"].model_copy(update={"unet_attention": "every"})
    assert config_digest(every) != config_digest(PRESETS["test"])
    assert "unet_attention" not in PRESETS["test"].model_dump()
    unet = make_unet(0, 16, attention="every")
    assert set(unet.config.down_block_types) == {"CrossAttnDownBlock2D"}
    assert set(unet.config.up_block_types) == {"CrossAttnUpBlock2D"}
    assert make_unet(0, 16).config.down_block_types[0] == "DownBlock2D"


@pytest.mark.parametrize("family", ["sd", "sdxl"])
def test_a_built_model_hashes_the_same_online_or_offline(tmp_path, monkeypatch, family):
    # transformers copies `local_files_only` (true under HF_HUB_OFFLINE, which the CLI and the
    # tests set, false in a plain library call) into tokenizer_config.json; the zoo's folders
    # must not record how their tokenizer was loaded, or a model's digest depends on it.
    import huggingface_hub.constants

    from auditor.identity import hash_model
    from export.testing import build_tiny_pipeline, build_tiny_xl_pipeline

    build = build_tiny_pipeline if family == "sd" else build_tiny_xl_pipeline
    digests = []
    for offline in (True, False):
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", offline)
        digests.append(hash_model(build(tmp_path / str(offline))).digest)
    assert digests[0] == digests[1]


def test_the_pool_trains_the_source_beside_the_suspects_that_do_not_need_it():
    from auditor.zoo.build import _pool_plan

    stage = _MICRO_STAGE
    innocent = SuspectSpec(name="innocent", rho=0.0, n_samples=8, train=stage)
    copy = SuspectSpec(name="copy", rho=0.3, n_samples=8, train=stage)
    rounded_away = SuspectSpec(name="none-generated", rho=0.05, n_samples=8, train=stage)  # 0.4 images
    assert _pool_plan([copy, innocent, rounded_away], True) == (
        [None, "innocent", "none-generated"],
        ["copy"],
    )
    assert _pool_plan([copy, innocent], False) == (["copy", "innocent"], [])
    assert _pool_plan([], True) == ([], [])


def test_a_zoo_built_by_two_workers_is_the_zoo_one_process_finds(tmp_path):
    """jobs=2 with the source missing: the workers build the source, the innocent beside it and
    then the copy; every artifact lands where a one-process build looks for it."""
    from auditor.zoo.build import build_zoo

    reference = SuspectSpec(name="reference", rho=0.0, n_samples=4, train=_MICRO_STAGE)
    config = _micro_zoo(references=(reference,))
    index = build_zoo(config, cache_dir=tmp_path, jobs=2)
    assert build_zoo(config, cache_dir=tmp_path, cached_only=True) == index
    assert set(index.suspects) == {"copy"} and set(index.references) == {"reference"}
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "artifacts").iterdir()) == [
        "base",
        "source",
        "suspect",
        "suspect",
        "vae",
    ]

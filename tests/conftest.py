"""Shared fixtures: seeded tiny components, one thread (2 shared cores; see docs)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_pipeline(tmp_path_factory) -> Path:
    """An untrained SD-architecture pipeline folder (random weights), built in seconds."""
    from auditor.zoo.models import TOKENIZER_MAX_LENGTH, make_text_encoder, make_unet, make_vae
    from auditor.zoo.pipelines import save_pipeline
    from auditor.zoo.tokenizer import build_clip_tokenizer

    root = tmp_path_factory.mktemp("tiny-pipeline")
    tokenizer = build_clip_tokenizer(root / "tok", model_max_length=TOKENIZER_MAX_LENGTH)
    save_pipeline(root / "model", make_unet(0), make_vae(0), make_text_encoder(0), tokenizer)
    return root / "model"


@pytest.fixture(scope="session")
def tiny_xl_pipeline(tmp_path_factory) -> Path:
    """An untrained SDXL-architecture pipeline folder (StableDiffusionXLPipeline, random weights)."""
    from export.testing import build_tiny_xl_pipeline

    return build_tiny_xl_pipeline(tmp_path_factory.mktemp("tiny-xl-pipeline"))


@pytest.fixture(scope="module")
def keys_dir(tmp_path_factory) -> Path:
    """A saved 3-key keyset of random 32x32 images (no model needed)."""
    from keyset_factory import make_keyset

    from auditor.keys import save_keyset

    root = tmp_path_factory.mktemp("keys") / "keys"
    keyset, images = make_keyset(n=3, size=32)
    save_keyset(keyset, images, root)
    return root


@pytest.fixture(scope="session")
def reference_models(tmp_path_factory) -> list[Path]:
    """Five untrained pipelines of other seeds: enough innocent references for the model-level test."""
    from export.testing import build_tiny_pipeline

    root = tmp_path_factory.mktemp("references")
    return [build_tiny_pipeline(root / f"ref-{seed}", seed=seed) for seed in range(11, 16)]

"""Keysets and audit results built without any model, for fast tests."""

from __future__ import annotations

import numpy as np

from auditor.config import GenerationSettings
from auditor.fileio import sha256_bytes
from auditor.images import encode_png
from auditor.keys import Key, KeySet, ModelRef, SelectionRecord


def make_keyset(n: int = 4, size: int = 32, seed: int = 0) -> tuple[KeySet, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    keys = tuple(
        Key(
            id=f"k{i:03d}",
            prompt=f"a small red circle on a blue background {i}",
            seed=0,
            selection_seeds=(0, 1, 2, 3),
            image=f"k{i:03d}.png",
            image_sha256=sha256_bytes(encode_png(images[i])),
            score=0.1,
            source_distance=0.05,
            base_distance=0.3,
        )
        for i in range(n)
    )
    keyset = KeySet(
        strategy="generation",
        source=ModelRef(name="source", digest="a" * 64),
        base=ModelRef(name="base", digest="b" * 64),
        generation=GenerationSettings(),
        height=size,
        width=size,
        selection=SelectionRecord(delta0=0.15, distance="l2", requested=n, candidates=10, eligible=n),
        keys=keys,
    )
    return keyset, images

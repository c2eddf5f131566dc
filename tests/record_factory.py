"""Per-model records (the workflow's `ReferenceResult`) made without generating anything, for
tests of what the studies do with them."""

from __future__ import annotations

import numpy as np

from auditor.backends import BackendInfo
from auditor.report import ReferenceResult

BACKEND = BackendInfo(backend="torch", device="cpu", dtype="float32", versions={})


def record(name: str, seed_distances: np.ndarray, delta0: float, token: str = "t" * 64) -> ReferenceResult:
    """One model's record from its (keys, seeds) distances, every figure consistent with them."""
    seeds = tuple(tuple(float(d) for d in row) for row in seed_distances)
    distances = tuple(min(row) for row in seeds)
    hits = sum(d < delta0 for d in distances)
    return ReferenceResult(
        name=name,
        digest=None,
        hits=hits,
        num_keys=len(distances),
        conf=hits / len(distances),
        distances=distances,
        seed_distances=seeds,
        audit_token=token,
        backend=BACKEND,
    )


def noise_records(study, seed: int = 0) -> dict[str, ReferenceResult]:
    """Every model of a study (and the base) with innocent-looking noise distances."""
    rng = np.random.default_rng(seed)
    return {
        name: record(name, 0.2 + 0.05 * rng.random((study.num_keys, study.seeds_per_key)), study.delta0)
        for name in ["base", *(m.name for m in study.members)]
    }

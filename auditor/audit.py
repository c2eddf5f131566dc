"""The instance-level audit: regenerate each key with the suspect and count close copies.

For each of the M keys the suspect generates from the key prompt with audit seeds that
differ from every seed the source used for the key (a shared initial noise pulls any
model closer to the key image and would inflate innocent hits). The key's distance is
the minimum over those seeds; a hit is a distance under delta0; conf = hits / M, the
paper's confidence. The verdict here is the paper's fixed threshold on conf; the
evidence report adds a calibrated test against innocent reference models.
"""

from __future__ import annotations

import time

import numpy as np
from pydantic import Field

from auditor.backends import BackendInfo, Generator
from auditor.config import AuditConfig, FrozenModel, GenerationSettings
from auditor.distance import get_distance
from auditor.errors import BadInputError
from auditor.fileio import sha256_bytes
from auditor.images import encode_png, to_float
from auditor.keys import KeySet


class KeyResult(FrozenModel):
    key_id: str
    prompt: str
    seeds: tuple[int, ...]
    distances: tuple[float, ...] = Field(description="one per audit seed")
    distance: float = Field(description="min over the audit seeds")
    hit: bool
    image_sha256s: tuple[str, ...] = Field(description="sha256 of each regenerated PNG")


class AuditResult(FrozenModel):
    keys: tuple[KeyResult, ...]
    num_keys: int
    hits: int
    conf: float
    mean_distance: float
    best_distance: float
    backend: BackendInfo
    generation: GenerationSettings
    seconds: float

    def distances(self) -> np.ndarray:
        return np.array([k.distance for k in self.keys])


def fixed_threshold_verdict(conf: float, threshold: float) -> str:
    return "infringing" if conf >= threshold else "not_infringing"


def run_audit(
    suspect: Generator,
    keyset: KeySet,
    key_images: np.ndarray,
    config: AuditConfig,
    settings: GenerationSettings | None = None,
    reporter=None,
    images_out: list[np.ndarray] | None = None,
) -> AuditResult:
    """Audit one suspect; `images_out`, when given, receives the regenerated images."""
    from auditor.progress import Reporter

    reporter = reporter or Reporter()
    settings = settings or keyset.generation
    seeds = config.audit_seeds()
    clash = set(seeds) & keyset.forbidden_seeds()
    if clash:
        raise BadInputError(
            f"audit_seed: seeds {sorted(clash)} were used by the source for the keys; "
            "choose an audit seed outside them"
        )
    keys = keyset.keys[: config.max_keys] if config.max_keys else keyset.keys
    refs = to_float(key_images[: len(keys)])
    distance = get_distance(config.distance)
    start = time.perf_counter()
    per_seed_d, per_seed_sha = [], []
    with reporter.task("audit: regenerate keys", len(seeds) * len(keys)) as advance:
        for r, seed in enumerate(seeds):
            generated = suspect.generate([k.prompt for k in keys], [seed] * len(keys), settings)
            if generated.shape[1:3] != refs.shape[1:3]:
                raise BadInputError(
                    f"suspect: generated {generated.shape[1]}x{generated.shape[2]} images but the keys are "
                    f"{refs.shape[1]}x{refs.shape[2]}; set the generation height/width to the keys' size"
                )
            per_seed_d.append(distance(to_float(generated), refs))
            per_seed_sha.append([sha256_bytes(encode_png(img)) for img in generated])
            if images_out is not None:
                images_out.append(generated)
            advance((r + 1) * len(keys))
    d = np.stack(per_seed_d)  # (seeds, keys)
    best = d.min(axis=0)
    results = tuple(
        KeyResult(
            key_id=key.id,
            prompt=key.prompt,
            seeds=tuple(seeds),
            distances=tuple(float(x) for x in d[:, i]),
            distance=float(best[i]),
            hit=bool(best[i] < config.delta0),
            image_sha256s=tuple(per_seed_sha[r][i] for r in range(len(seeds))),
        )
        for i, key in enumerate(keys)
    )
    hits = sum(k.hit for k in results)
    return AuditResult(
        keys=results,
        num_keys=len(results),
        hits=hits,
        conf=hits / len(results),
        mean_distance=float(best.mean()),
        best_distance=float(best.min()),
        backend=suspect.describe(),
        generation=settings,
        seconds=time.perf_counter() - start,
    )

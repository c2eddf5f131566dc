"""The instance-level audit: regenerate each key with the suspect, J times, and measure how close.

For each of the M keys the suspect generates from the key prompt J times (`seeds_per_key`,
default 4), each with its own seed. Every (key, j) seed is derived from the audit nonce
and the key's id (`audit_seeds`), so no two keys share initial noise and no seed equals
one the source used for a key (a shared initial noise pulls any model closer to the key
image and would inflate innocent hits). The nonce defaults to one derived from the
keyset digest, and the report records it, so a rerun regenerates every image exactly.

A key's distance is the min over its J generations; a hit is a distance under delta0;
conf = hits / M, the paper's confidence. Every (key, seed) distance is kept: the
model-level verdict (`auditor.calibration`) and the report use them.
"""

from __future__ import annotations

import hashlib
import time

import numpy as np
from pydantic import Field

from auditor.backends import BackendInfo, Generator
from auditor.config import AuditConfig, FrozenModel, GenerationSettings
from auditor.distance import get_distance
from auditor.errors import BadInputError
from auditor.fileio import canonical_json, sha256_bytes
from auditor.images import encode_png, to_float
from auditor.keys import Key, KeySet

SEED_SCHEME = b"t2i-auditor-audit-seed-v1"
NONCE_SCHEME = b"t2i-auditor-audit-nonce-v1"


class KeyResult(FrozenModel):
    key_id: str
    prompt: str
    seeds: tuple[int, ...] = Field(description="this key's audit seeds, one per generation")
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
    config: AuditConfig = Field(description="as run: the nonce filled in")
    token: str = Field(description="what must be equal for two audits to be comparable (audit_token)")
    seconds: float

    def distances(self) -> np.ndarray:
        return np.array([k.distance for k in self.keys])


def fixed_threshold_verdict(conf: float, threshold: float) -> str:
    """The paper's verdict: a fixed threshold on conf (a figure in the report, not its verdict)."""
    return "infringing" if conf >= threshold else "not_infringing"


def default_nonce(keyset_digest: str) -> str:
    """The audit nonce a keyset gets when none is given: fixed per keyset, so references audited
    once serve every later audit with the same keys, and reruns are exact."""
    return hashlib.sha256(NONCE_SCHEME + b"\0" + keyset_digest.encode("ascii")).hexdigest()[:32]


def with_nonce(config: AuditConfig, keyset: KeySet) -> AuditConfig:
    """`config` with its audit nonce filled in (the keyset's default when it has none)."""
    if config.audit_nonce is not None:
        return config
    return config.model_copy(update={"audit_nonce": default_nonce(keyset.digest)})


def audit_seeds(
    nonce: str, keys: tuple[Key, ...], per_key: int, forbidden: set[int]
) -> dict[str, tuple[int, ...]]:
    """Every key's `per_key` audit seeds: sha256(scheme, nonce, key id, counter), 63 bits, skipping
    any seed the source used for a key and any already given to another (key, j)."""
    used: set[int] = set()
    out: dict[str, tuple[int, ...]] = {}
    for key in keys:
        seeds: list[int] = []
        counter = 0
        while len(seeds) < per_key:
            message = b"\0".join(
                (SEED_SCHEME, nonce.encode("ascii"), key.id.encode("ascii"), str(counter).encode())
            )
            seed = int.from_bytes(hashlib.sha256(message).digest()[:8], "big") & (2**63 - 1)
            counter += 1
            if seed not in forbidden and seed not in used:
                seeds.append(seed)
                used.add(seed)
        out[key.id] = tuple(seeds)
    return out


def audit_token(keyset: KeySet | str, config: AuditConfig, settings: GenerationSettings) -> str:
    """sha256 over what decides every regenerated image and distance: keyset, audit config (nonce,
    J, distance, delta0, key count), the distance's settings and weights digest, and generation
    settings. References are comparable with a
    suspect only when their tokens are equal."""
    relevant = config.model_dump(mode="json", exclude={"batch_size", "conf_threshold", "min_references"})
    document = {
        "scheme": "t2i-auditor-audit-token-v1",
        "keyset": keyset if isinstance(keyset, str) else keyset.digest,
        "config": relevant,
        "settings": settings.model_dump(mode="json"),
    }
    # the distance's settings and weights beside its name (none for l2: its tokens are unchanged)
    if identity := get_distance(config.distance).identity():
        document["distance"] = identity
    return sha256_bytes(canonical_json(document))


def run_audit(
    suspect: Generator,
    keyset: KeySet,
    key_images: np.ndarray,
    config: AuditConfig,
    settings: GenerationSettings | None = None,
    reporter=None,
    images_out: list[np.ndarray] | None = None,
) -> AuditResult:
    """Audit one generator; `images_out`, when given, receives the regenerated images (per round j)."""
    from auditor.progress import Reporter

    reporter = reporter or Reporter()
    settings = settings or keyset.generation
    config = with_nonce(config, keyset)
    assert config.audit_nonce is not None
    keys = keyset.keys[: config.max_keys] if config.max_keys else keyset.keys
    seeds = audit_seeds(config.audit_nonce, keys, config.seeds_per_key, keyset.forbidden_seeds())
    refs = to_float(key_images[: len(keys)])
    distance = get_distance(config.distance)
    start = time.perf_counter()
    per_seed_d, per_seed_sha = [], []
    rounds = config.seeds_per_key
    with reporter.task("audit: regenerate keys", rounds * len(keys)) as advance:
        for j in range(rounds):
            generated = suspect.generate([k.prompt for k in keys], [seeds[k.id][j] for k in keys], settings)
            if generated.shape[1:3] != refs.shape[1:3]:
                raise BadInputError(
                    f"suspect: generated {generated.shape[1]}x{generated.shape[2]} images but the keys are "
                    f"{refs.shape[1]}x{refs.shape[2]}; set the generation height/width to the keys' size"
                )
            per_seed_d.append(distance(to_float(generated), refs))
            per_seed_sha.append([sha256_bytes(encode_png(img)) for img in generated])
            if images_out is not None:
                images_out.append(generated)
            advance((j + 1) * len(keys))
    d = np.stack(per_seed_d)  # (J, keys)
    best = d.min(axis=0)
    results = tuple(
        KeyResult(
            key_id=key.id,
            prompt=key.prompt,
            seeds=seeds[key.id],
            distances=tuple(float(x) for x in d[:, i]),
            distance=float(best[i]),
            hit=bool(best[i] < config.delta0),
            image_sha256s=tuple(per_seed_sha[j][i] for j in range(rounds)),
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
        config=config,
        token=audit_token(keyset, config, settings),
        seconds=time.perf_counter() - start,
    )

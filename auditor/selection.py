"""Choosing key samples from the source model (the paper's two strategies and its baseline).

A good key is a (prompt, image) pair that the source reproduces idiosyncratically: a
model that learned from the source's outputs inherits the idiosyncrasy, an independent
model does not. The base model is the control: if the base also reproduces the image,
the image is generic for its prompt and proves nothing.

- detection:  source training pairs the source has memorized (regenerated from the
              caption, min distance over seeds < delta0) and the base has not;
- generation: source generations that the source re-creates from other seeds (max
              distance < delta0) and the base does not (min distance >= delta0);
- random:     training pairs drawn at random (the paper's baseline 2).
Eligible candidates are ranked by their margin (base distance minus source distance).

A selection panel (innocent fine-tunes of the base, kept apart from the references the
verdict is calibrated on) screens the eligible candidates: one that any panel model
reproduces (min distance over the selection seeds < delta0) is what innocent fine-tuning
alone can reach, and is dropped. The keyset records the panel's digests, so none of its
models can later serve as a reference.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydantic import Field, model_validator

from auditor.backends import Generator
from auditor.config import FrozenModel, GenerationSettings
from auditor.distance import get_distance
from auditor.errors import BadInputError
from auditor.fileio import sha256_bytes
from auditor.images import encode_png, to_float
from auditor.keys import Key, KeySet, ModelRef, SelectionRecord, Strategy
from auditor.progress import Reporter


class SelectionConfig(FrozenModel):
    strategy: Strategy = "generation"
    num_keys: int = Field(30, ge=1, description="M, the paper's key count")
    delta0: float = Field(0.15, gt=0.0, lt=1.0)
    distance: str = "l2"
    seeds: tuple[int, ...] = Field(
        (0, 1, 2, 3),
        min_length=2,
        description="generation: seeds[0] makes the key image, the rest test consistency; "
        "detection: all regenerate each training caption",
    )
    random_seed: int = Field(0, description="rng seed of the random strategy")

    @model_validator(mode="after")
    def _distinct(self) -> SelectionConfig:
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError("seeds must be distinct")
        return self


def _grid(
    generator: Generator, prompts: Sequence[str], seeds: Sequence[int], settings, reporter, label
) -> np.ndarray:
    """Images for every (prompt, seed): shape (len(seeds), len(prompts), H, W, 3), as floats."""
    out = []
    with reporter.task(label, len(seeds)) as advance:
        for i, seed in enumerate(seeds):
            out.append(to_float(generator.generate(list(prompts), [seed] * len(prompts), settings)))
            advance(i + 1)
    return np.stack(out)


def select_keys(
    config: SelectionConfig,
    *,
    source: Generator,
    source_ref: ModelRef,
    settings: GenerationSettings,
    prompts: Sequence[str],
    train_images: np.ndarray | None = None,
    base: Generator | None = None,
    base_ref: ModelRef | None = None,
    panel: Sequence[tuple[Generator, ModelRef]] = (),
    reporter: Reporter | None = None,
) -> tuple[KeySet, np.ndarray]:
    """Return the keyset and its images (uint8, in key order)."""
    reporter = reporter or Reporter()
    distance = get_distance(config.distance)
    prompts = list(prompts)
    if not prompts:
        raise BadInputError("candidates: expected at least one prompt, got none")
    needs_train = config.strategy in ("detection", "random")
    if needs_train and (train_images is None or len(train_images) != len(prompts)):
        raise BadInputError(f"--train-data: the {config.strategy} strategy needs the source's training pairs")
    if panel and config.strategy == "random":
        raise BadInputError("--panel: the random strategy selects no candidates to screen; drop the panel")
    if config.strategy != "random" and base is None:
        raise BadInputError(f"--base: the {config.strategy} strategy needs the base model as its control")

    source_d = base_d = None
    rejected = 0
    chosen_seed = np.full(len(prompts), config.seeds[0], dtype=np.int64)
    if config.strategy == "random":
        rng = np.random.default_rng(config.random_seed)
        order = rng.permutation(len(prompts))[: config.num_keys]
        eligible = len(prompts)
        key_images = np.asarray(train_images)
        seeds_used: tuple[int, ...] = (config.seeds[0],)
    else:
        if config.strategy == "generation":
            grid = _grid(source, prompts, config.seeds, settings, reporter, "keys: source")
            key_float = grid[0]
            key_images = np.clip(np.rint(key_float * 255), 0, 255).astype(np.uint8)
            source_d = np.max([distance(grid[j], key_float) for j in range(1, len(config.seeds))], axis=0)
        else:
            key_images = np.asarray(train_images)
            key_float = to_float(key_images)
            grid = _grid(source, prompts, config.seeds, settings, reporter, "keys: source")
            per_seed = np.stack([distance(grid[j], key_float) for j in range(len(config.seeds))])
            source_d = per_seed.min(axis=0)
            chosen_seed = np.asarray(config.seeds)[per_seed.argmin(axis=0)]
        base_grid = _grid(base, prompts, config.seeds, settings, reporter, "keys: base")
        base_d = np.min([distance(base_grid[j], key_float) for j in range(len(config.seeds))], axis=0)
        ok = (source_d < config.delta0) & (base_d >= config.delta0)
        if panel:
            panel_d = _panel_distances(panel, prompts, ok, key_float, config, settings, distance, reporter)
            rejected = int(np.sum(ok & (panel_d < config.delta0)))
            ok &= panel_d >= config.delta0
        margin = base_d - source_d
        ranked = [i for i in np.argsort(-margin, kind="stable") if ok[i]]
        eligible = len(ranked)
        order = np.asarray(ranked[: config.num_keys], dtype=np.int64)
        seeds_used = tuple(config.seeds)
    if len(order) == 0:
        raise BadInputError(
            f"keys: no candidate qualifies under the {config.strategy} strategy "
            f"(delta0 {config.delta0}); try more candidate prompts or another strategy"
        )
    if len(order) < config.num_keys:
        reporter.log(f"[yellow]only {len(order)} of {config.num_keys} requested keys qualify[/yellow]")

    keys, images = [], []
    for n, i in enumerate(order):
        image = key_images[i]
        keys.append(
            Key(
                id=f"k{n:03d}",
                prompt=prompts[i],
                seed=int(chosen_seed[i]),
                selection_seeds=seeds_used,
                image=f"k{n:03d}.png",
                image_sha256=sha256_bytes(encode_png(image)),
                score=None if base_d is None else float(base_d[i] - source_d[i]),
                source_distance=None if source_d is None else float(source_d[i]),
                base_distance=None if base_d is None else float(base_d[i]),
            )
        )
        images.append(image)
    keyset = KeySet(
        strategy=config.strategy,
        source=source_ref,
        base=base_ref,
        generation=settings,
        height=int(key_images.shape[1]),
        width=int(key_images.shape[2]),
        selection=SelectionRecord(
            delta0=config.delta0,
            distance=config.distance,
            requested=config.num_keys,
            candidates=len(prompts),
            eligible=eligible,
            panel=tuple(ref for _, ref in panel),
            panel_rejected=rejected,
        ),
        keys=tuple(keys),
    )
    return keyset, np.stack(images)


def _panel_distances(
    panel, prompts, candidates: np.ndarray, key_float: np.ndarray, config, settings, distance, reporter
) -> np.ndarray:
    """Per candidate, the min distance any panel model gets to its image over the selection seeds
    (only eligible candidates are generated; the others get +inf)."""
    out = np.full(len(prompts), np.inf)
    chosen = np.flatnonzero(candidates)
    if chosen.size == 0:
        return out
    subset = [prompts[i] for i in chosen]
    for generator, ref in panel:
        grid = _grid(generator, subset, config.seeds, settings, reporter, f"keys: panel {ref.name}")
        d = np.min([distance(grid[j], key_float[chosen]) for j in range(len(config.seeds))], axis=0)
        out[chosen] = np.minimum(out[chosen], d)
    return out

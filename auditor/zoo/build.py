"""The zoo: the paper's roles (base, source, infringing and innocent suspects) built here.

What to build is an `auditor.zoo.config.ZooConfig`. Every artifact lives in a folder named by the hash of its own config and of the
artifacts it was made from, so an interrupted build resumes where it stopped and
changing one suspect does not retrain the base. Folders are built under a temporary
name and renamed when complete: a crash never leaves a half-written model behind.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from pydantic_core import to_jsonable_python

from auditor.config import FrozenModel
from auditor.fileio import atomic_write_text, canonical_json, sha256_bytes
from auditor.finetune import LORA_FILE, Recipe, encode_latents, finetune, train_noise_prediction
from auditor.progress import Reporter
from auditor.watermark import embed
from auditor.zoo import data
from auditor.zoo.config import StageSpec, SuspectSpec, ZooConfig
from auditor.zoo.launder import launder
from auditor.zoo.models import make_train_scheduler, make_vae
from auditor.zoo.pipelines import ZooParts
from auditor.zoo.train import train_vae

ZOO_FORMAT = "t2i-auditor-zoo-v3"  # bump when training code changes what a config produces


class ZooIndex(FrozenModel):
    """Where the built models are; what `zoo build` prints and the demo reads."""

    config_digest: str
    root: str
    base: str
    base_digest: str
    source: str
    source_digest: str
    source_train: str
    suspects: dict[str, str]
    references: dict[str, str]
    rho: dict[str, float]

    def suspect_path(self, name: str) -> Path:
        return Path(self.suspects[name])


def config_digest(obj: object) -> str:
    return sha256_bytes(canonical_json({"format": ZOO_FORMAT, "config": to_jsonable_python(obj)}))


def default_cache_dir() -> Path:
    if env := os.environ.get("T2I_AUDITOR_CACHE"):
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "t2i-auditor"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class _Artifacts:
    """Content-addressed folders: built once under a temporary name, then renamed."""

    def __init__(self, root: Path, reporter: Reporter, cached_only: bool = False) -> None:
        self.root = root / "artifacts"
        self.reporter = reporter
        self.cached_only = cached_only
        self.seconds: dict[str, float] = {}
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, role: str, key: object) -> Path:
        return self.root / f"{role}-{config_digest(key)[:16]}"

    def get(self, role: str, key: object, build: Callable[[Path], None]) -> tuple[Path, str]:
        digest = config_digest(key)
        final = self.path_for(role, key)
        if final.is_dir():
            self.reporter.log(f"zoo: {role} cached ({final.name})")
            return final, digest
        if self.cached_only:
            raise FileNotFoundError(f"zoo: {role} is not built yet ({final}); run the build stage first")
        start = time.perf_counter()
        for stale in self.root.glob(f".{final.name}.tmp-*"):  # left by a killed build
            if not _pid_alive(int(stale.name.rsplit("-", 1)[1])):
                shutil.rmtree(stale, ignore_errors=True)
        tmp = self.root / f".{final.name}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        try:
            build(tmp)
            (tmp / "zoo-artifact.json").write_text(
                json.dumps({"role": role, "digest": digest, "key": to_jsonable_python(key)}, indent=2)
            )
            try:
                os.replace(tmp, final)
            except OSError:
                if not final.is_dir():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # a concurrent build finished first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.seconds[role] = time.perf_counter() - start
        self.reporter.log(f"zoo: {role} built in {self.seconds[role]:.1f} s ({final.name})")
        return final, digest


def _domain_schedule(domain: tuple[str, ...], n: int, rng: np.random.Generator) -> list[str]:
    """n captions cycling over the domain in shuffled rounds, so coverage is as even as n allows."""
    order: list[str] = []
    while len(order) < n:
        order.extend(domain[i] for i in rng.permutation(len(domain)))
    return order[:n]


def build_zoo(
    config: ZooConfig,
    cache_dir: Path | None = None,
    reporter: Reporter | None = None,
    jobs: int = 1,
    cached_only: bool = False,
) -> ZooIndex:
    """Build (or load from cache) every model the config names and return their paths.

    With `jobs` > 1 the fine-tunes run in that many worker processes of one torch thread
    each (on small CPU machines two single-threaded processes beat one process with two
    threads), and the source trains in one of them beside the fine-tunes that only need
    the base: innocents train on real images, so only suspects with generated data wait
    for the source. With `cached_only` nothing is trained: a missing artifact raises
    FileNotFoundError.
    """
    reporter = reporter or Reporter()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    world = _World(config, root, reporter, cached_only)
    if jobs > 1 and not cached_only:
        first, after_source = _pool_plan(world.missing(), world.source_missing())
        if len(first) + len(after_source) > 1:
            _run_pool(
                [(config, name) for name in first],
                root,
                jobs,
                reporter,
                f"zoo: {len(first) + len(after_source)} models",
                after_source=[(config, name) for name in after_source],
            )
    suspects: dict[str, str] = {}
    references: dict[str, str] = {}
    for spec in (*config.suspects, *config.references):
        (references if spec in config.references else suspects)[spec.name] = str(world.suspect(spec))
    source_root = world.source_root()
    index = ZooIndex(
        config_digest=config_digest(config),
        root=str(root),
        base=str(world.base_dir),
        base_digest=world.base_digest,
        source=str(source_root / "pipeline"),
        source_digest=world.source_digest,
        source_train=str(source_root / "train"),
        suspects=suspects,
        references=references,
        rho={spec.name: spec.rho for spec in (*config.suspects, *config.references)},
    )
    atomic_write_text(root / f"zoo-{index.config_digest[:16]}.json", index.model_dump_json(indent=2))
    return index


def _needs_source(spec: SuspectSpec) -> bool:
    """Whether a suspect's training set holds any of the source's generations."""
    return round(spec.rho * spec.n_samples) > 0


def _pool_plan(
    missing: Sequence[SuspectSpec], source_missing: bool
) -> tuple[list[str | None], list[str | None]]:
    """What the workers build at once (None: the source) and what waits for the source.

    A missing source goes first, beside every missing suspect that trains on real images
    only; the suspects with generated data follow it."""
    if not missing:
        return [], []
    waits = [s.name for s in missing if source_missing and _needs_source(s)]
    first = [None] if source_missing else []
    return first + [s.name for s in missing if s.name not in waits], list(waits)


class _World:
    """One zoo's data, VAE and base, built or loaded on opening; its source and suspects on demand.

    The source is trained only when something asks for it (a suspect with generated data, or
    the index), so a worker fine-tuning an innocent never waits for it."""

    def __init__(self, config: ZooConfig, root: Path, reporter: Reporter, cached_only: bool) -> None:
        from diffusers import AutoencoderKL

        from auditor.backends import quiet_hf_libraries

        quiet_hf_libraries()
        self.config, self.reporter = config, reporter
        self.store = _Artifacts(root, reporter, cached_only)
        workdir = root / "work"
        workdir.mkdir(parents=True, exist_ok=True)
        self.parts = ZooParts(config.family, config.seed, workdir)
        res = self.res = config.resolution

        # Data: the public set pre-trains the base; the private set is the owner's secret data.
        self.space = space = data.caption_space()
        public = data.draw(
            [c for c in space for _ in range(config.public_draws_per_caption)], config.seed, res
        )
        rng = np.random.default_rng([config.seed, 1])
        private_captions = [
            space[i] for i in rng.choice(len(space), size=config.private_samples, replace=False)
        ]
        self.private = private = data.draw(private_captions, config.seed + 1, res)
        self.domain = tuple(dict.fromkeys(private.captions))

        # VAE (shared by every role, frozen after this stage, as SD fine-tunes keep it fixed).
        vae_key = {  # the VAE trains on the public and the private images: both counts name it
            "resolution": res,
            "seed": config.seed,
            "draws": config.public_draws_per_caption,
            "private": config.private_samples,
            "vae": config.vae,
        }

        def build_vae(out: Path) -> None:
            vae = make_vae(config.vae.seed, res)
            with reporter.task("zoo: VAE", config.vae.steps) as advance:
                scale = train_vae(
                    vae,
                    np.concatenate([public.images, private.images]),
                    steps=config.vae.steps,
                    batch_size=config.vae.batch_size,
                    lr=config.vae.lr,
                    seed=config.vae.seed,
                    progress=advance,
                )
            vae.register_to_config(scaling_factor=scale)
            vae.save_pretrained(out, safe_serialization=True)

        vae_dir, vae_digest = self.store.get("vae", vae_key, build_vae)
        self.vae = AutoencoderKL.from_pretrained(vae_dir).eval()
        self.states, self.pooled = self.parts.encode(list(space))

        base_key = {"vae": vae_digest, "base": config.base, "draws": config.public_draws_per_caption}
        if config.unet_channels != (32, 64):
            base_key["unet_channels"] = config.unet_channels
        if config.unet_attention != "low":
            base_key["unet_attention"] = config.unet_attention
        if config.family != "sd":  # SD bases keep the keys (and caches) they had before SDXL
            base_key["family"] = config.family
        self.base_dir, self.base_digest = self.store.get(
            "base",
            base_key,
            lambda out: self.parts.save(
                out, self._train(None, config.base, public.images, public.captions, "zoo: base"), self.vae
            ),
        )
        private_count = config.private_samples
        self._source_key = {"base": self.base_digest, "source": config.source, "private": private_count}
        self.source_digest = config_digest(self._source_key)  # known before the source is trained
        self._source_root: Path | None = None
        self._source_generator = None

    def _train(self, parent_unet: Path | None, spec: StageSpec, images: np.ndarray, captions, label: str):
        from diffusers import UNet2DConditionModel

        config = self.config
        if parent_unet:
            unet = UNet2DConditionModel.from_pretrained(parent_unet)
        else:
            unet = self.parts.make_unet(spec.seed, self.res, config.unet_channels, config.unet_attention)
        latents = encode_latents(self.vae, images, float(self.vae.config.scaling_factor))
        with self.reporter.task(label, spec.steps) as advance:
            train_noise_prediction(
                unet,
                latents,
                list(captions),
                self.states,
                make_train_scheduler(),
                steps=spec.steps,
                batch_size=spec.batch_size,
                lr=spec.lr,
                seed=spec.seed,
                progress=advance,
                pooled=self.pooled,
                time_ids=self.parts.time_ids(self.res),
            )
        return unet

    def source_missing(self) -> bool:
        return not self.store.path_for("source", self._source_key).is_dir()

    def source_root(self) -> Path:
        """The source's folder (`pipeline/` and its private `train/` set), trained on first need."""
        if self._source_root is None:

            def build_source(out: Path) -> None:
                private, parent = self.private, self.base_dir / "unet"
                stage = self.config.source
                unet = self._train(parent, stage, private.images, private.captions, "zoo: source")
                self.parts.save(out / "pipeline", unet, self.vae)
                data.save_dataset(private, out / "train")

            self._source_root, digest = self.store.get("source", self._source_key, build_source)
            assert digest == self.source_digest
        return self._source_root

    def _key(self, spec: SuspectSpec) -> dict:
        return _suspect_key(self.base_digest, self.source_digest, spec, self.config)

    def missing(self) -> list[SuspectSpec]:
        """The suspects and references not built yet, in the config's order."""
        return [
            spec
            for spec in (*self.config.suspects, *self.config.references)
            if not self.store.path_for(f"suspect-{spec.name}", self._key(spec)).is_dir()
        ]

    def suspect(self, spec: SuspectSpec) -> Path:
        """A suspect's model (a pipeline folder, or the LoRA file on the base), built on first need."""
        path, _ = self.store.get(
            f"suspect-{spec.name}", self._key(spec), lambda out: self._build_suspect(spec, out)
        )
        return path / LORA_FILE if spec.lora_rank is not None else path

    def _build_suspect(self, spec: SuspectSpec, out: Path) -> None:
        config, res = self.config, self.res
        srng = np.random.default_rng([config.seed, 2, spec.train.seed])
        captions = _domain_schedule(_domain(spec, self.domain, self.space, config.seed), spec.n_samples, srng)
        generated = np.zeros(spec.n_samples, dtype=bool)
        generated[srng.choice(spec.n_samples, size=round(spec.rho * spec.n_samples), replace=False)] = True
        images = data.draw(captions, int(srng.integers(2**31)), res, _style(spec)).images.copy()
        if generated.any():
            if self._source_generator is None:
                from auditor.backends import SuspectSpec as ModelSpec
                from auditor.backends import open_suspect

                source_dir = self.source_root() / "pipeline"
                self._source_generator = open_suspect(ModelSpec(model=str(source_dir), device="cpu"))
            prompts = [c for c, g in zip(captions, generated, strict=True) if g]
            seeds = [int(s) for s in srng.integers(2**31, 2**32, size=len(prompts))]
            with self.reporter.task(f"zoo: {spec.name} data", 1) as advance:
                outputs = self._source_generator.generate(prompts, seeds, config.generation)
                images[generated] = embed(outputs, spec.watermark) if spec.watermark else outputs
                advance(1)
        if spec.launder is not None:
            images = launder(images, spec.launder)
        recipe = Recipe(
            steps=spec.train.steps,
            learning_rate=spec.train.lr,
            batch_size=spec.train.batch_size,
            seed=spec.train.seed,
            lora_rank=spec.lora_rank,
            lora_targets=spec.lora_targets,
        )
        label = f"zoo: {spec.name}"
        if spec.then is None:
            finetune(self.base_dir, images, captions, recipe, out, reporter=self.reporter, label=label)
            return
        first = out / ".infringing"  # skipped when the second fine-tune copies its parent's files
        finetune(self.base_dir, images, captions, recipe, first, reporter=self.reporter, label=label)
        _further(
            spec,
            first,
            out,
            _domain(spec, self.domain, self.space, config.seed),
            res,
            config.seed,
            self.reporter,
        )
        shutil.rmtree(first)


def _further(
    spec: SuspectSpec,
    parent: Path,
    out: Path,
    domain: tuple[str, ...],
    res: int,
    seed: int,
    reporter: Reporter,
) -> None:
    """The `then` stage: the infringing model fine-tuned further on fresh real draws of its captions.

    The draws are seeded by the stage's own seed, so they are independent of the images the
    model infringed with, and like what an innocent of the same captions trains on."""
    assert spec.then is not None
    stage = spec.then.train
    rng = np.random.default_rng([seed, 4, stage.seed])
    captions = _domain_schedule(domain, spec.then.n_samples, rng)
    images = data.draw(captions, int(rng.integers(2**31)), res, _style(spec)).images.copy()
    recipe = Recipe(steps=stage.steps, learning_rate=stage.lr, batch_size=stage.batch_size, seed=stage.seed)
    finetune(parent, images, captions, recipe, out, reporter=reporter, label=f"zoo: {spec.name} further")


def _style(spec: SuspectSpec) -> data.Style:
    default = data.DEFAULT_STYLE
    return data.Style(
        gradient=default.gradient if spec.style_gradient is None else spec.style_gradient,
        jitter=default.jitter if spec.style_jitter is None else spec.style_jitter,
    )


def _domain(spec: SuspectSpec, source: tuple[str, ...], space: list[str], seed: int) -> tuple[str, ...]:
    """The captions a suspect trains on: the source's domain, as many others of the world, or half each."""
    if spec.domain in (None, "source"):
        return source
    others = [c for c in space if c not in set(source)]
    picked = np.random.default_rng([seed, 3]).choice(
        len(others), size=min(len(source), len(others)), replace=False
    )
    other = tuple(others[i] for i in sorted(picked))
    if spec.domain == "other":
        return other
    half = len(source) // 2
    return source[:half] + other[: len(source) - half]


def _suspect_key(base_digest: str, source_digest: str, spec: SuspectSpec, config: ZooConfig) -> dict:
    # exclude_none: suspects without a watermark keep the digests (and caches) they had before it existed
    suspect = spec.model_dump(mode="json", exclude_none=True)
    return {"base": base_digest, "source": source_digest, "suspect": suspect, "generation": config.generation}


def _build_one(config_json: str, cache_dir: str, name: str | None) -> str:
    """Worker: one suspect of the zoo, or its source when `name` is None (VAE and base built first
    when missing, as `build_zoos` leaves them to the workers)."""
    torch.set_num_threads(1)
    config = ZooConfig.model_validate_json(config_json)
    world = _World(config, Path(cache_dir), Reporter(), cached_only=False)
    if name is None:
        return str(world.source_root() / "pipeline")
    (spec,) = (s for s in (*config.suspects, *config.references) if s.name == name)
    return str(world.suspect(spec))


def _run_pool(
    tasks: list[tuple[ZooConfig, str | None]],
    root: Path,
    jobs: int,
    reporter: Reporter,
    label: str,
    after_source: Sequence[tuple[ZooConfig, str | None]] = (),
) -> None:
    """Build `tasks` in `jobs` single-threaded worker processes; `after_source` is queued once
    every source task (name None) of `tasks` is done, behind what is still waiting."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    context = multiprocessing.get_context("spawn")  # no forked torch thread pools
    total = len(tasks) + len(after_source)
    with (
        reporter.task(f"{label}, {jobs} processes", total) as advance,
        ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool,
    ):

        def submit(batch):
            return {pool.submit(_build_one, c.model_dump_json(), str(root), name): name for c, name in batch}

        pending = submit(tasks)
        sources_left = sum(name is None for _, name in tasks)
        waiting = list(after_source)
        done = 0
        try:
            while pending:
                finished, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()
                    name = pending.pop(future)
                    done += 1
                    reporter.log(f"zoo: {name or 'source'} ready ({done}/{total})")
                    advance(done)
                    sources_left -= name is None
                if waiting and not sources_left:
                    pending |= submit(waiting)
                    waiting = []
        except BaseException:  # a failed build or Ctrl-C: do not train the rest of the queue first
            pool.shutdown(wait=False, cancel_futures=True)
            raise


def build_zoos(
    configs: list[ZooConfig], cache_dir: Path | None = None, reporter: Reporter | None = None, jobs: int = 1
) -> list[ZooIndex]:
    """Several zoos (model families) sharing one pool of `jobs` worker processes.

    Bases and sources go first, one family per worker, then every suspect of every family
    in one queue, so two cores stay busy even when one family has fewer models left.
    """
    reporter = reporter or Reporter()
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    if jobs > 1:
        _run_pool(
            [(c, None) for c in configs], root, jobs, reporter, f"zoo: {len(configs)} bases and sources"
        )
        pending = [
            (config, spec.name)
            for config in configs
            for spec in _World(config, root, reporter, False).missing()
        ]
        if pending:
            _run_pool(pending, root, jobs, reporter, f"zoo: {len(pending)} suspects")
    return [build_zoo(config, root, reporter) for config in configs]

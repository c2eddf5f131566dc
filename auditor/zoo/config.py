"""What a zoo is: its world, its stages, its suspects, and the presets (`demo`, `test`) of each family.

Scaled from the paper (source fine-tuned on 3000 samples; suspects on 500 samples for
3000 iterations) to what two CPU cores afford; docs/zoo.md lists the scaled counts.
`auditor.zoo.build` turns a config into models. Two families of the same world: `sd`
(StableDiffusionPipeline models, `PRESETS`) and `sdxl` (StableDiffusionXLPipeline models,
`SDXL_PRESETS`); `preset(family, name)` picks one.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_serializer, model_validator

from auditor.config import FrozenModel, GenerationSettings
from auditor.watermark import WatermarkSpec
from auditor.zoo.launder import Laundering


class StageSpec(FrozenModel):
    steps: int = Field(ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(gt=0)
    seed: int = 0


class FurtherSpec(FrozenModel):
    """Laundering by training: after infringing, the model is fine-tuned further on real images.

    `n_samples` fresh real draws of the suspect's own captions (its innocent counterpart's
    data), `train` the continued fine-tune (a full one, from the infringing weights)."""

    n_samples: int = Field(ge=1)
    train: StageSpec


class SuspectSpec(FrozenModel):
    """A model fine-tuned from the base on `n_samples`, a share `rho` of them source generations.

    Fields left None keep the defaults (and the cache digests models had before the field
    existed): the source's caption domain, the world's drawing style, a full fine-tune.
    """

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_.-]*$")
    rho: float = Field(ge=0.0, le=1.0)
    n_samples: int = Field(ge=1)
    train: StageSpec
    watermark: WatermarkSpec | None = Field(
        None, description="baseline 1: the source's generations reach this suspect watermarked"
    )
    domain: Literal["source", "other", "half"] | None = Field(
        None,
        description="captions: the source's private ones (default), others of the world, or half of each",
    )
    style_gradient: float | None = Field(None, ge=0.0, le=0.5, description="lighting ramp of its real images")
    style_jitter: float | None = Field(None, ge=0.0, le=0.3, description="colour jitter of its real images")
    lora_rank: int | None = Field(None, ge=1, description="a LoRA on the base instead of a full fine-tune")
    lora_targets: Literal["attention", "locon"] | None = Field(
        None, description="LoRA modules: attention projections (None) or LoCon's linears and convolutions"
    )
    launder: Laundering | None = Field(None, description="post-processing of its training images")
    then: FurtherSpec | None = Field(None, description="a further fine-tune on real images after this one")

    @model_serializer(mode="wrap")
    def _as_before_laundering(self, handler):
        """Fields added for the laundering study are left out while None: configs without them
        hash (and name their zoo indexes) as before."""
        data = handler(self)
        if isinstance(data, dict):
            for name in ("launder", "then", "lora_targets"):
                if data.get(name, 0) is None:
                    del data[name]
        return data

    @model_validator(mode="after")
    def _further_is_full(self) -> SuspectSpec:
        if self.then is not None and self.lora_rank is not None:
            raise ValueError("then: a further fine-tune continues a full fine-tune, not a LoRA")
        return self

    @property
    def infringing(self) -> bool:
        return self.rho > 0


Family = Literal["sd", "sdxl"]
FAMILIES: tuple[str, ...] = ("sd", "sdxl")


class ZooConfig(FrozenModel):
    family: Family = Field(
        "sd", description="sd: StableDiffusionPipeline models; sdxl: StableDiffusionXLPipeline"
    )
    resolution: int = 32
    unet_channels: tuple[int, int] = (32, 64)
    unet_attention: Literal["low", "every"] = Field(
        "low",
        description="UNet levels with cross-attention: the lowest only, or every level (the LoRA world)",
    )
    seed: int = 0
    public_draws_per_caption: int = Field(2, ge=1, description="base pre-training set: 448 captions x this")
    private_samples: int = Field(64, ge=1, description="the source's private fine-tuning set (paper: 3000)")
    vae: StageSpec = StageSpec(steps=800, batch_size=32, lr=1e-3, seed=1)
    base: StageSpec = StageSpec(steps=2000, lr=1e-3, seed=2)
    source: StageSpec = StageSpec(steps=3000, lr=5e-4, seed=3)
    suspects: tuple[SuspectSpec, ...] = ()
    references: tuple[SuspectSpec, ...] = Field(
        (), description="innocent fine-tunes (rho = 0) kept apart from the suspects to calibrate verdicts"
    )
    generation: GenerationSettings = GenerationSettings(steps=20, guidance_scale=3.0)

    @model_serializer(mode="wrap")
    def _sd_as_before(self, handler):
        """`family` is left out while "sd" and `unet_attention` while "low": such configs hash
        (and name their caches) as before those fields existed."""
        data = handler(self)
        if isinstance(data, dict):
            for name, default in (("family", "sd"), ("unet_attention", "low")):
                if data.get(name) == default:
                    del data[name]
        return data


def _suspects(
    n: int, steps: int, lr: float, rhos: tuple[float, ...], prefix: str = "", seed: int = 100
) -> tuple[SuspectSpec, ...]:
    out = []
    for i, rho in enumerate(rhos):
        name = prefix + (f"innocent-{i}" if rho == 0 else f"infringing-rho{rho:.1f}")
        out.append(
            SuspectSpec(name=name, rho=rho, n_samples=n, train=StageSpec(steps=steps, lr=lr, seed=seed + i))
        )
    return tuple(out)


MIN_REFERENCES = 5  # the verdict's default (AuditConfig.min_references): the presets build that many

PRESETS: dict[str, ZooConfig] = {
    # `t2i-audit demo`: infringing at rho 1.0 and 0.3 and one innocent model, judged against five
    # innocent references trained exactly like the innocent suspect (other seeds and data draws).
    "demo": ZooConfig(
        suspects=_suspects(128, 2000, 5e-4, (1.0, 0.3, 0.0)),
        references=_suspects(128, 2000, 5e-4, (0.0,) * MIN_REFERENCES, prefix="reference-", seed=200),
    ),
    # The integration test: the same world, trained for a fraction of the steps.
    "test": ZooConfig(
        resolution=16,
        public_draws_per_caption=1,
        private_samples=16,
        vae=StageSpec(steps=800, batch_size=16, lr=2e-3, seed=1),
        base=StageSpec(steps=1500, lr=1e-3, seed=2),
        source=StageSpec(steps=2000, lr=5e-4, seed=3),
        suspects=_suspects(32, 800, 5e-4, (1.0, 0.0)),
        references=_suspects(32, 800, 5e-4, (0.0,) * MIN_REFERENCES, prefix="reference-", seed=200),
    ),
}

# The SDXL world: the same world, roles, counts and training as the SD presets, with SDXL-architecture
# models (auditor/zoo/models.py), so the two families can be compared preset by preset.
SDXL_PRESETS: dict[str, ZooConfig] = {
    name: config.model_copy(update={"family": "sdxl"}) for name, config in PRESETS.items()
}


def preset(family: str, name: str) -> ZooConfig:
    presets = SDXL_PRESETS if family == "sdxl" else PRESETS
    if family not in FAMILIES or name not in presets:
        raise KeyError(f"no zoo preset {name!r} for family {family!r}")
    return presets[name]

"""LoRA world probe: can a LoRA infringer move toward the source's key images in the tiny zoo?

    OMP_NUM_THREADS=1 python bench/lora_probe.py --out DIR [--world low|every] [--variants a,b] [--seeds 2]

In the laundering study's world (the calibration study's 16 px world; `--world every` gives
its UNet cross-attention at every level, `ZooConfig.unet_attention`), builds as zoo suspects
(cached) the study's selection panel, `--seeds` full fine-tunes infringing at rho 1.0 and as
many innocent ones, and per variant (targets, rank, learning rate, steps) as many LoRA
infringers at rho 1.0 and innocent LoRAs on real images of the same captions. Members keep
the laundering study's names and seeds, so in the default world they are its models (one
cache). Selects the study's generation keys in DIR/keys, audits every model (each LoRA as a
LoRA file on the base; the workflow's audit, M keys x J seeds) and prints, per variant and
role, the median over models of each model's median key distance and the share of
(key, seed) pairs under delta0. Append-only JSON lines go to DIR/lora-probe.jsonl for
docs/zoo.md.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

# name: (targets, rank, lr, steps), cheapest first
VARIANTS: dict[str, tuple[str, int, float, int]] = {
    "attn-r8": ("attention", 8, 1e-3, 800),
    "attn-r16-lr3e-3": ("attention", 16, 3e-3, 800),
    "locon-r8": ("locon", 8, 1e-3, 800),
    "locon-r16-lr3e-3": ("locon", 16, 3e-3, 800),
    "attn-r32-lr3e-3-1600": ("attention", 32, 3e-3, 1600),
}


def probe_study(world: str, variant: str | None, seeds: int):
    """The laundering study's panel, its unlaundered rho-1 infringers, its first innocents and its
    LoRA row for `variant`, in the chosen world; the references are left out (seeds unchanged)."""
    from auditor.reproduction import laundering_study as ls

    study = ls.tiny()
    zoo = study.zoo.model_copy(update={"suspects": (), "unet_attention": world})
    recipe = {"steps": 800, "lr": 5e-4, "n": 64}
    full = ls._study(
        "probe", zoo, recipe, references=8, panel=4, innocents=seeds, infringers=seeds, low_rho=None,
        lora=VARIANTS[variant] if variant else None, attacks=("none",),
    )  # fmt: skip
    keep = {m.name for m in full.members if m.role != "reference"}
    return full.model_copy(
        update={
            "zoo": full.zoo.model_copy(
                update={"suspects": tuple(s for s in full.zoo.suspects if s.name in keep)}
            ),
            "members": tuple(m for m in full.members if m.name in keep),
        }
    )


def main() -> None:
    import torch

    from auditor.backends import SuspectSpec as ModelSpec
    from auditor.config import AuditConfig
    from auditor.progress import RichReporter
    from auditor.reproduction.calibration_study import _base_of, _keys, build_stage
    from auditor.workflow import Audit, load_keys, resolve_settings

    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True, type=Path, help="keys and lora-probe.jsonl go here")
    parser.add_argument("--world", choices=["low", "every"], default="low")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--cache", type=Path)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(1)
    reporter = RichReporter()
    done: set[str] = set()  # models already audited in this run (the full fine-tunes, the base)
    for variant in [None, *args.variants.split(",")]:
        start = time.perf_counter()
        study = probe_study(args.world, variant, args.seeds)
        index = build_stage(study, args.cache, reporter, args.jobs)
        keys = load_keys(_keys(study, index, args.out, reporter))
        config = AuditConfig(delta0=study.delta0, seeds_per_key=study.seeds_per_key)
        audit = Audit(keys=keys, config=config, settings=resolve_settings(keys.keyset))
        rows: dict[str, list[tuple[float, float]]] = {}
        models = {m.name: (m.role, m.group) for m in study.members if m.role != "panel"}
        if variant is None:
            models["base"] = ("base", "base")
        for name, (role, group) in models.items():
            if name in done:
                continue
            path = index.base if name == "base" else index.suspects[name]
            spec = ModelSpec(model=path, base=_base_of(path, index), device="cpu")
            record = audit.record(spec, name=name)
            d = np.array(record.distances)
            pairs = np.array([x for seeds in record.seed_distances for x in seeds])
            label = f"{role} {'full fine-tune' if group in ('none', 'reference recipe') else group}"
            rows.setdefault(label, []).append((float(np.median(d)), float(np.mean(pairs < study.delta0))))
            done.add(name)
        record = {
            "world": args.world,
            "variant": variant or "full fine-tune",
            "targets_rank_lr_steps": VARIANTS.get(variant or ""),
            "keys": len(keys.keyset.keys),
            "seeds": args.seeds,
            **{
                label: {
                    "median_d": float(np.median([r[0] for r in v])),
                    "share_pairs_under_delta0": float(np.mean([r[1] for r in v])),
                    "per_model": v,
                }
                for label, v in rows.items()
            },
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(record), flush=True)
        with open(args.out / "lora-probe.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

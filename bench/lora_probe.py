"""LoRA world probe: can a LoRA infringer move toward the source's key images in the tiny zoo?

    OMP_NUM_THREADS=1 python bench/lora_probe.py --keys OUT/laundering/keys [--variants a,b] [--seeds 2]

For each variant (targets, rank, learning rate, steps), builds as zoo suspects (cached) a LoRA
infringer at rho 1.0 and an innocent LoRA on real images of the same captions, in the laundering
study's world (the calibration study's 16 px world), for `--seeds` data draws each, audits every
LoRA as a LoRA file on the base with the study's keys (the workflow's audit, M keys x J seeds)
and prints, per variant and role, the median over models of each model's median key distance and
the share of (key, seed) pairs under delta0. Append-only JSON lines go to --out for docs/zoo.md.
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


def specs(variant: str, seeds: int):
    """The laundering study's LoRA row for this recipe (same names and seeds: a shared cache)."""

    study = tiny_with(variant, seeds)
    return [s for s in study.zoo.suspects if s.lora_rank is not None]


def tiny_with(variant: str, seeds: int):
    from auditor.reproduction import laundering_study as ls

    world = ls.tiny().zoo.model_copy(update={"suspects": ()})
    recipe = {"steps": 800, "lr": 5e-4, "n": 64}
    return ls._study(
        "probe", world, recipe, references=0, panel=0, innocents=0, infringers=seeds, low_rho=None,
        lora=VARIANTS[variant], attacks=(),
    )  # fmt: skip


def main() -> None:
    import torch

    from auditor.backends import SuspectSpec as ModelSpec
    from auditor.config import AuditConfig
    from auditor.reproduction.laundering_study import tiny
    from auditor.workflow import audit_model, load_keys, resolve_settings
    from auditor.zoo.build import build_zoo

    parser = argparse.ArgumentParser()
    parser.add_argument("--keys", required=True)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--out", default="lora-probe.jsonl")
    parser.add_argument(
        "--records", help="the laundering study's audits/ folder: full fine-tunes for comparison"
    )
    args = parser.parse_args()
    if args.records:  # the same keys: the study's unlaundered infringers and its innocents, full fine-tunes
        for role, prefix in (("infringing", "infringing-rho1.0-none-"), ("innocent", "innocent-same-")):
            found = [json.loads(f.read_text()) for f in sorted(Path(args.records).glob(f"{prefix}*.json"))]
            medians = [float(np.median(r["distances"])) for r in found]
            shares = [float(np.mean(np.array(r["seed_distances"]) < 0.15)) for r in found]
            print(
                json.dumps({"variant": "full fine-tune (study)", "role": role, "n": len(found),
                            "median_d": float(np.median(medians)), "share_pairs_under_delta0": float(np.mean(shares))}),
                flush=True,
            )  # fmt: skip
    torch.set_num_threads(1)
    study = tiny()
    keys = load_keys(args.keys)
    config = AuditConfig(delta0=study.delta0, seeds_per_key=study.seeds_per_key)
    settings = resolve_settings(keys.keyset)
    for variant in args.variants.split(","):
        start = time.perf_counter()
        zoo = study.zoo.model_copy(update={"suspects": tuple(specs(variant, args.seeds))})
        index = build_zoo(zoo)
        rows: dict[str, list[tuple[float, float]]] = {"infringing": [], "innocent": []}
        for name, path in index.suspects.items():
            result, _ = audit_model(
                ModelSpec(model=path, base=index.base, device="cpu"), keys, config, settings
            )
            d = np.array([k.distance for k in result.keys])
            pairs = np.array([x for k in result.keys for x in k.distances])
            role = "infringing" if name.startswith("infringing") else "innocent"
            rows[role].append((float(np.median(d)), float(np.mean(pairs < study.delta0))))
        record = {
            "variant": variant,
            "targets_rank_lr_steps": VARIANTS[variant],
            "seeds": args.seeds,
            **{f"{role}_median_d": float(np.median([r[0] for r in v])) for role, v in rows.items()},
            **{
                f"{role}_share_pairs_under_delta0": float(np.mean([r[1] for r in v]))
                for role, v in rows.items()
            },
            "per_model": rows,
            "seconds": round(time.perf_counter() - start, 1),
        }
        print(json.dumps(record), flush=True)
        with open(args.out, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()

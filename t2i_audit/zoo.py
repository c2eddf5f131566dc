"""`t2i-audit zoo build`: train (or load from the cache) the built-in tiny zoo."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i_audit._common import Context, add_command, add_group, add_jobs_argument


def register(sub: argparse._SubParsersAction) -> None:
    from auditor.zoo.config import FAMILIES, PRESETS

    zoo = add_group(sub, "zoo", "the built-in tiny model zoo")
    p = add_command(zoo, "build", "train (or load from cache) the tiny SD or SDXL zoo", cmd_zoo_build)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default="sd",
        help="sd: StableDiffusionPipeline models; sdxl: StableDiffusionXLPipeline models (default sd)",
    )
    p.add_argument(
        "--cache", type=Path, help="cache directory (default $T2I_AUDITOR_CACHE or ~/.cache/t2i-auditor)"
    )
    add_jobs_argument(p, "the source and the suspects")


def cmd_zoo_build(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.zoo.build import build_zoo
    from auditor.zoo.config import preset

    config = preset(args.family, args.preset)
    index = build_zoo(config, cache_dir=args.cache, reporter=ctx.reporter, jobs=args.jobs)
    if ctx.format == "json":
        ctx.emit_json(index.model_dump(mode="json"))
    else:
        ctx.console.print(f"[bold]zoo[/bold] {index.config_digest[:16]} in {index.root}")
        for role, path in [("base", index.base), ("source", index.source), *index.suspects.items()]:
            ctx.console.print(f"  {role:24s} {path}")
    return 0

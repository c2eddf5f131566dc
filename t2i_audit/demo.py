"""`t2i-audit demo`: the whole method on the built-in tiny zoo, in one command."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i_audit._common import Context, add_command, add_jobs_argument


def register(sub: argparse._SubParsersAction) -> None:
    from auditor.zoo.config import FAMILIES, PRESETS

    p = add_command(sub, "demo", "zoo -> keys -> audits of infringing and innocent models", cmd_demo)
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument(
        "--family",
        choices=FAMILIES,
        default="sd",
        help="sd: StableDiffusionPipeline models; sdxl: StableDiffusionXLPipeline models (default sd)",
    )
    p.add_argument("--out", default="demo-out", help="output folder (default ./demo-out)")
    p.add_argument("--cache", type=Path, help="zoo cache directory")
    add_jobs_argument(p, "the source and the suspects")
    p.add_argument("--strategy", choices=["detection", "generation", "random"], default="generation")


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.demo import print_demo, run_demo

    result = run_demo(
        family=args.family,
        preset=args.preset,
        out=Path(args.out),
        cache_dir=args.cache,
        strategy=args.strategy,
        reporter=ctx.reporter,
        jobs=args.jobs,
    )
    if ctx.format == "json":
        ctx.emit_json(result.model_dump(mode="json"))
    else:
        print_demo(result, ctx.console)
    return 0

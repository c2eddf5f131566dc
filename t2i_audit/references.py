"""`t2i-audit references build`: innocent reference models for your own model, from your own images."""

from __future__ import annotations

import argparse
from pathlib import Path

from t2i_audit._common import Context, add_command, add_group, device, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    group = add_group(sub, "references", "innocent reference models (the verdict's null)")
    p = add_command(
        group,
        "build",
        "fine-tune N references of the public base on your real captioned images (resumable)",
        cmd_references_build,
    )
    p.add_argument("--base", required=True, help="the public base model (diffusers folder)")
    p.add_argument(
        "--data",
        required=True,
        help="an imagefolder: images plus metadata.jsonl ({file_name, text} per line)",
    )
    p.add_argument(
        "--count",
        type=positive_int,
        required=True,
        help="how many references (at least 5 to decide; 8 or more recommended, 16 if you can: power"
        " against rho = 0.3 infringers at alpha 0.01 was 0.62, 0.81 and 0.87 with 5, 8 and 16 on 30 keys"
        " and 0.77, 0.86 and 0.87 on 49, but 0.25, 0.30 and 0.32 where 13 keys qualified, in the worlds"
        " that confirmed the test; docs/reproduction.md)",
    )
    p.add_argument("--out", required=True, help="folder of the references and references.json")
    p.add_argument("--steps", type=positive_int, default=3000, help="fine-tuning steps each (default 3000)")
    p.add_argument("--learning-rate", type=float, default=5e-4, help="AdamW learning rate (default 5e-4)")
    p.add_argument("--batch-size", type=positive_int, default=16)
    p.add_argument(
        "--samples", type=positive_int, help="pairs each reference draws from the data (default all)"
    )
    p.add_argument("--seed", type=int, default=0, help="reference i uses seed + i (default 0)")
    p.add_argument(
        "--lora-rank", type=positive_int, help="train LoRA adapters of this rank instead of the UNet"
    )
    p.add_argument(
        "--gradient-checkpointing", action="store_true", help="less GPU memory, slower (SD 1.5 size)"
    )
    p.add_argument("--device", type=device, default="auto", help="auto, cpu, cuda, cuda:N (default auto)")


def cmd_references_build(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.documents import validate
    from auditor.finetune import Recipe
    from auditor.references import INDEX_FILE, build_references

    recipe = validate(
        Recipe,
        {
            "steps": args.steps,
            "learning_rate": args.learning_rate,
            "batch_size": args.batch_size,
            "samples": args.samples,
            "seed": args.seed,
            "lora_rank": args.lora_rank,
            "gradient_checkpointing": args.gradient_checkpointing,
        },
        "references build",
    )
    made = build_references(
        args.base, args.data, args.count, recipe, args.out, device=args.device, reporter=ctx.reporter
    )
    if ctx.format == "json":
        ctx.emit_json(made.model_dump(mode="json"))
    else:
        for model in made.models:
            ctx.plain(f"{model.name}  {model.digest[:16]}  {Path(args.out) / model.path}")
        ctx.plain(f"{len(made.models)} references listed in {Path(args.out) / INDEX_FILE}")
    return 0

"""`t2i-audit audit` (one suspect, through `auditor.workflow`) and `t2i-audit schema`."""

from __future__ import annotations

import argparse
from pathlib import Path

from auditor.errors import BadInputError
from t2i_audit._common import (
    Context,
    add_command,
    generation_options,
    model_options,
    probability,
    runtime_options,
    suspect_spec,
)


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "audit",
        "instance-level audit of one suspect model",
        cmd_audit,
        parents=(generation_options(), runtime_options(), model_options()),
    )
    p.add_argument("--keys", required=True, help="keyset folder")
    p.add_argument(
        "--suspect",
        required=True,
        help="the model under audit: diffusers folder, checkpoint, LoRA (with --base), bundle or http(s) URL",
    )
    p.add_argument(
        "--reference", action="append", help="an innocent reference model (repeatable); calibrates"
    )
    p.add_argument(
        "--reference-set", metavar="DIR", help="every reference `t2i-audit references build` made there"
    )
    p.add_argument(
        "--allow-inconclusive",
        action="store_true",
        help="audit with fewer than --min-references references: a report whose verdict is inconclusive",
    )
    p.add_argument(
        "--panel",
        action="append",
        metavar="MODEL",
        help="check the keyset was screened by this panel (repeatable)",
    )
    p.add_argument("--out", help="write the report JSON here")
    p.add_argument("--delta0", type=float, help="hit threshold (default 0.15)")
    p.add_argument("--distance", help="distance name (default l2)")
    p.add_argument("--seeds-per-key", type=int, help="J: generations per key, each its own seed (default 4)")
    p.add_argument(
        "--audit-nonce", help="32 hex digits every audit seed derives from (default: derived from the keyset)"
    )
    p.add_argument(
        "--min-references",
        type=int,
        help="fewer innocent references: the verdict is inconclusive (default 5)",
    )
    p.add_argument("--max-keys", type=int)
    p.add_argument(
        "--conf-threshold", type=float, help="uncalibrated verdict threshold on conf (default 0.5)"
    )
    p.add_argument(
        "--alpha", type=probability, default=0.01, help="significance level of the calibrated verdict"
    )
    p.add_argument(
        "--sign", metavar="KEY", help="sign the report with this Ed25519 private key (needs --out)"
    )
    p.add_argument("--save-images", metavar="DIR", help="keep the suspect's regenerations, named by sha256")
    p.add_argument(
        "--discriminator",
        metavar="FILE",
        help="statistical level: score with this discriminator (shadow fit)",
    )

    add_command(sub, "schema", "print the report's JSON Schema", cmd_schema)


def audit_config(args: argparse.Namespace):
    from auditor.config import AuditConfig
    from auditor.documents import validate

    values = {
        "delta0": args.delta0,
        "distance": args.distance,
        "seeds_per_key": args.seeds_per_key,
        "audit_nonce": args.audit_nonce,
        "min_references": args.min_references,
        "max_keys": args.max_keys,
        "conf_threshold": args.conf_threshold,
        "batch_size": args.batch_size,
    }
    return validate(AuditConfig, {k: v for k, v in values.items() if v is not None}, "audit config")


def cmd_audit(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.workflow import Audit, load_keys, save_outcome, transcript_path
    from t2i_audit._common import settings

    if args.sign and not args.out:
        raise BadInputError("--sign: expected --out too (the signed envelope is written next to the report)")
    keys = load_keys(args.keys)
    audit = Audit(
        keys=keys,
        config=audit_config(args),
        settings=settings(args, keys.keyset),
        alpha=args.alpha,
        references=_reference_specs(args, keys.keyset),
        discriminator=Path(args.discriminator) if args.discriminator else None,
        panel=tuple(suspect_spec(path, args) for path in args.panel or ()),
        allow_inconclusive=args.allow_inconclusive,
        signing_key=Path(args.sign) if args.sign else None,
    )
    audit.check()  # a bad key or discriminator fails now, not after hours of generation
    regenerated: list | None = [] if args.save_images else None
    outcome = audit.run(suspect_spec(args.suspect, args), reporter=ctx.reporter, images_out=regenerated)
    if regenerated is not None:
        _save_regenerations(Path(args.save_images), regenerated)
    if args.out:
        save_outcome(outcome, args.out, audit.signing_key, transcript_path(args.out))
    report = outcome.report
    if ctx.format == "json":
        ctx.emit_json(report.model_dump(mode="json"))
    else:
        from auditor.views import print_report_summary

        print_report_summary(report, ctx.console)
        if args.out:
            ctx.console.print(f"report written to {args.out}")
    return 0


def _reference_specs(args: argparse.Namespace, keyset) -> tuple:
    """--reference models, then every model of --reference-set (checked against the keys' base)."""
    from auditor.references import all_reference_specs

    runtime = {
        "backend": args.backend,
        "device": args.device,
        "dtype": args.dtype,
        "batch_size": args.batch_size,
    }
    base = keyset.base.digest if keyset.base is not None else None
    explicit = [suspect_spec(path, args) for path in args.reference or ()]
    return all_reference_specs(explicit, args.reference_set, base, **runtime)


def _save_regenerations(directory: Path, batches: list) -> None:
    """Regenerated images named by their sha256, the name the report cites them by."""
    from auditor.fileio import atomic_write_bytes, sha256_bytes
    from auditor.images import encode_png

    directory.mkdir(parents=True, exist_ok=True)
    for batch in batches:
        for image in batch:
            data = encode_png(image)
            target = directory / f"{sha256_bytes(data)}.png"
            if not target.exists():
                atomic_write_bytes(target, data)


def cmd_schema(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.report import report_schema

    ctx.emit_json(report_schema())
    return 0

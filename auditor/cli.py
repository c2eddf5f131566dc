"""`t2i-audit`: one command line with subcommands, usable from tests as `main(argv)`.

Exit codes are the contract with batch schedulers: 0 done, 1 verification failed,
2 bad input (do not retry), 75 transient (retry). Every non-zero exit prints exactly
one line on stderr; tracebacks are for bugs, never for foreseen bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from auditor import __version__
from auditor.errors import EXIT_BAD_INPUT, AuditorError, BadInputError
from auditor.keys import ModelRef


def _quiet_third_party() -> None:
    """No hub access, no stray progress bars: set before diffusers/transformers load."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so errors stay one line."""

    def error(self, message: str):  # type: ignore[override]
        raise BadInputError(f"{self.prog}: {message}")


class Context:
    def __init__(self, fmt: str) -> None:
        from rich.console import Console

        from auditor.progress import Reporter, RichReporter

        self.format = fmt
        # Piped to a file or a CI log, rich would wrap tables at 80 columns.
        self.console = Console(width=None if sys.stdout.isatty() else 160)
        self.reporter = Reporter() if fmt == "json" else RichReporter()

    def emit_json(self, obj: object) -> None:
        sys.stdout.write(json.dumps(obj, indent=2) + "\n")
        sys.stdout.flush()


# ---------------------------------------------------------------- shared options


def _settings_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation (defaults: the keyset's settings)")
    g.add_argument("--steps", type=int, help="denoising steps")
    g.add_argument("--guidance", type=float, help="classifier-free guidance scale")
    g.add_argument("--scheduler", help="ddim, pndm, euler, euler_a, dpm++, ddpm, lms")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)


def _runtime_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N (default auto)")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--batch-size", type=int, default=16)
    g.add_argument(
        "--backend",
        default="torch",
        help="torch (a diffusers folder) or onnx / tensorrt (an exported bundle, see `t2i-audit export`)",
    )


def _settings(args: argparse.Namespace, base=None):
    from auditor.config import GenerationSettings

    overrides = {
        k: v
        for k, v in {
            "steps": args.steps,
            "guidance_scale": args.guidance,
            "scheduler": args.scheduler,
            "height": args.height,
            "width": args.width,
        }.items()
        if v is not None
    }
    values = (base.model_dump() if base is not None else {}) | overrides
    return _validated(GenerationSettings, values, "generation settings")


def _validated(model, values: dict, what: str):
    from auditor.documents import validate

    return validate(model, values, what)


def _generator(path: str, args: argparse.Namespace):
    from auditor.generation import load_generator

    return load_generator(
        path,
        backend=getattr(args, "backend", "torch"),
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
    )


def identify_model(path: str) -> tuple[ModelRef, str]:
    """A report's reference to a model (basename + manifest digest, no local path) and its kind.

    An engine bundle stands for the model it was exported from: its files are re-hashed
    against its manifest and the report cites the source model's digest, so audits via
    torch and via engines name the same model. An HTTP endpoint has no weights to hash.
    """
    from auditor.identity import hash_model

    if str(path).startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        return ModelRef(name=urlsplit(str(path)).hostname or "http-endpoint", digest=None), "http_endpoint"
    if (Path(path) / "bundle.json").is_file():
        from export.manifest import load_bundle

        source = load_bundle(path).manifest.source
        return ModelRef(name=source.name, digest=source.digest), "engine_bundle"
    identity = hash_model(path)
    return ModelRef(name=identity.name, digest=identity.digest), identity.kind


def model_ref(path: str) -> ModelRef:
    return identify_model(path)[0]


def _read_prompts(path: str) -> list[str]:
    p = Path(path)
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise BadInputError(f"{p}: prompts file not found") from None
    except UnicodeDecodeError:
        raise BadInputError(f"{p}: expected UTF-8 text, one prompt per line") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise BadInputError(f"{p}: expected one prompt per line, the file has none")
    return prompts


# ---------------------------------------------------------------- zoo


def cmd_zoo_build(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.zoo.build import PRESETS, build_zoo

    index = build_zoo(PRESETS[args.preset], cache_dir=args.cache, reporter=ctx.reporter, jobs=args.jobs)
    if ctx.format == "json":
        ctx.emit_json(index.model_dump(mode="json"))
    else:
        ctx.console.print(f"[bold]zoo[/bold] {index.config_digest[:16]} in {index.root}")
        for role, path in [("base", index.base), ("source", index.source), *index.suspects.items()]:
            ctx.console.print(f"  {role:24s} {path}")
    return 0


# ---------------------------------------------------------------- keys


def cmd_keys_select(args: argparse.Namespace, ctx: Context) -> int:
    import numpy as np

    from auditor.keys import save_keyset
    from auditor.selection import SelectionConfig, select_keys
    from auditor.zoo.data import load_dataset

    seeds = _parse_seeds(args.seeds) if args.seeds else None
    config = _validated(
        SelectionConfig,
        {
            "strategy": args.strategy,
            "num_keys": args.num_keys,
            "delta0": args.delta0,
            "distance": args.distance,
            **({"seeds": seeds} if seeds else {}),
            "random_seed": args.random_seed,
        },
        "key selection",
    )
    out = Path(args.out)
    if (out / "keys.json").exists():
        raise BadInputError(f"{out}: a keyset already exists there; choose another --out")
    train_images = None
    if args.train_data:
        dataset = load_dataset(args.train_data)
        prompts, train_images = list(dataset.captions), np.asarray(dataset.images)
    elif args.prompts:
        prompts = _read_prompts(args.prompts)
    else:
        raise BadInputError("keys select: expected --prompts FILE or --train-data DIR")
    settings = _settings(args)
    source = _generator(args.source, args)
    base = _generator(args.base, args) if args.base else None
    keyset, images = select_keys(
        config,
        source=source,
        source_ref=model_ref(args.source),
        settings=settings,
        prompts=prompts,
        train_images=train_images,
        base=base,
        base_ref=model_ref(args.base) if args.base else None,
        reporter=ctx.reporter,
    )
    digest = save_keyset(keyset, images, out)
    summary = {
        "keyset": str(out),
        "digest": digest,
        "strategy": keyset.strategy,
        "num_keys": len(keyset.keys),
    }
    if ctx.format == "json":
        ctx.emit_json(summary)
    else:
        ctx.console.print(f"{len(keyset.keys)} {keyset.strategy} keys written to {out} (digest {digest})")
    return 0


def _parse_seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise BadInputError(f"--seeds: expected comma-separated integers, got {text!r}") from None


def cmd_keys_digest(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.keys import load_keyset

    keyset, _ = load_keyset(args.keys)
    if ctx.format == "json":
        ctx.emit_json({"digest": keyset.digest, "num_keys": len(keyset.keys), "strategy": keyset.strategy})
    else:
        ctx.console.print(keyset.digest)
    return 0


# ---------------------------------------------------------------- audit


def cmd_audit(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.audit import run_audit
    from auditor.config import AuditConfig
    from auditor.keys import load_keyset
    from auditor.report import (
        SuspectRef,
        build_report,
        load_discriminator_for,
        reference_result,
        save_report,
        score_with_discriminator,
    )

    if args.sign:
        if not args.out:
            raise BadInputError(
                "--sign: expected --out too (the signed envelope is written next to the report)"
            )
        from auditor.signing import load_signer

        load_signer(args.sign)  # fail on a bad key before hours of generation, not after
    keyset, images = load_keyset(args.keys)
    config = _validated(
        AuditConfig,
        {
            k: v
            for k, v in {
                "delta0": args.delta0,
                "distance": args.distance,
                "seeds_per_key": args.seeds_per_key,
                "audit_seed": args.audit_seed,
                "max_keys": args.max_keys,
                "conf_threshold": args.conf_threshold,
                "batch_size": args.batch_size,
            }.items()
            if v is not None
        },
        "audit config",
    )
    # A bad or mismatched discriminator fails now, not after hours of generation.
    discriminator = load_discriminator_for(args.discriminator, keyset, config) if args.discriminator else None
    settings = _settings(args, keyset.generation)
    commitment = load_keyset_commitment(args.keys, keyset.digest)
    suspect_ref, suspect_kind = identify_model(args.suspect)
    references = []
    for ref_path in args.reference or []:
        ref = model_ref(ref_path)
        result = run_audit(_generator(ref_path, args), keyset, images, config, settings, ctx.reporter)
        references.append(reference_result(ref.name, ref.digest, result))
    regenerated: list = [] if args.save_images else None
    result = run_audit(
        _generator(args.suspect, args), keyset, images, config, settings, ctx.reporter, regenerated
    )
    if args.save_images:
        _save_regenerations(Path(args.save_images), regenerated)
    statistical = (
        score_with_discriminator(discriminator, args.discriminator, result) if discriminator else None
    )
    report = build_report(
        result=result,
        keyset=keyset,
        suspect=SuspectRef(name=suspect_ref.name, digest=suspect_ref.digest, kind=suspect_kind),
        config=config,
        references=tuple(references),
        alpha=args.alpha,
        commitment=commitment,
        statistical=statistical,
    )
    if args.out:
        if args.sign:  # the envelope first: a report on disk always has its signature beside it
            from auditor.evidence import write_signed_report

            write_signed_report(report, args.sign, envelope_path(args.out))
        save_report(report, args.out)
    if ctx.format == "json":
        ctx.emit_json(report.model_dump(mode="json"))
    else:
        from auditor.views import print_report_summary

        print_report_summary(report, ctx.console)
        if args.out:
            ctx.console.print(f"report written to {args.out}")
    return 0


def envelope_path(report_path: str | Path) -> Path:
    """report.json -> report.dsse.json: the signed envelope lives beside the plain report."""
    p = Path(report_path)
    return p.with_name(p.name.removesuffix(".json") + ".dsse.json")


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


def load_keyset_commitment(keys_dir: str, keyset_digest: str) -> str | None:
    """The keyset's pre-registered commitment (keys_dir/commitment.json), checked, if there is one."""
    path = Path(keys_dir) / "commitment.json"
    if not path.exists():
        return None
    from auditor.commitment import load_commitment, verify_commitment

    commitment = load_commitment(path)
    verify_commitment(commitment, keyset_digest)
    return commitment.commitment


# ---------------------------------------------------------------- demo, schema


def cmd_demo(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.demo import print_demo, run_demo

    result = run_demo(
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


def cmd_schema(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.report import report_schema

    ctx.emit_json(report_schema())
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    from auditor.zoo.build import PRESETS

    parser = _Parser(
        prog="t2i-audit",
        description="Training data attribution for text-to-image models: "
        "was this suspicious model trained on images that my model generated?",
    )
    parser.add_argument("--version", action="version", version=f"t2i-audit {__version__}")
    parser.add_argument("--format", choices=["human", "json"], default="human", help="output format (stdout)")
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser, required=True)

    zoo = sub.add_parser("zoo", help="the built-in tiny model zoo").add_subparsers(
        dest="zoo_command", metavar="ZOO_COMMAND", parser_class=_Parser, required=True
    )
    p = zoo.add_parser("build", help="train (or load from cache) the tiny SD zoo")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument(
        "--cache", type=Path, help="cache directory (default $T2I_AUDITOR_CACHE or ~/.cache/t2i-auditor)"
    )
    p.add_argument(
        "--jobs", type=int, default=2, help="suspects fine-tuned in parallel processes (default 2)"
    )
    p.set_defaults(func=cmd_zoo_build)

    keys = sub.add_parser("keys", help="key samples").add_subparsers(
        dest="keys_command", metavar="KEYS_COMMAND", parser_class=_Parser, required=True
    )
    p = keys.add_parser("select", help="select key samples from the source model")
    p.add_argument("--source", required=True, help="the owner's model (diffusers folder)")
    p.add_argument("--base", help="the public base model, the control (detection and generation strategies)")
    p.add_argument("--strategy", choices=["detection", "generation", "random"], default="generation")
    p.add_argument("--prompts", help="candidate prompts, one per line (generation strategy)")
    p.add_argument("--train-data", help="the source's training pairs: a folder with captions.jsonl + PNGs")
    p.add_argument("--out", required=True, help="new keyset folder")
    p.add_argument("--num-keys", type=int, default=30, help="M (paper: 30)")
    p.add_argument("--delta0", type=float, default=0.15)
    p.add_argument("--distance", default="l2")
    p.add_argument("--seeds", help="selection seeds, comma-separated (default 0,1,2,3)")
    p.add_argument("--random-seed", type=int, default=0, help="rng seed of the random strategy")
    _settings_args(p)
    _runtime_args(p)
    p.set_defaults(func=cmd_keys_select)
    p = keys.add_parser("digest", help="verify a keyset and print its digest")
    p.add_argument("keys", help="keyset folder")
    p.set_defaults(func=cmd_keys_digest)

    p = sub.add_parser("audit", help="instance-level audit of one suspect model")
    p.add_argument("--keys", required=True, help="keyset folder")
    p.add_argument("--suspect", required=True, help="the model under audit (diffusers folder)")
    p.add_argument(
        "--reference", action="append", help="an innocent reference model (repeatable); calibrates"
    )
    p.add_argument("--out", help="write the report JSON here")
    p.add_argument("--delta0", type=float, help="hit threshold (default 0.15)")
    p.add_argument("--distance", help="distance name (default l2)")
    p.add_argument("--seeds-per-key", type=int)
    p.add_argument("--audit-seed", type=int)
    p.add_argument("--max-keys", type=int)
    p.add_argument(
        "--conf-threshold", type=float, help="uncalibrated verdict threshold on conf (default 0.5)"
    )
    p.add_argument("--alpha", type=float, default=0.01, help="significance level of the calibrated verdict")
    p.add_argument(
        "--sign", metavar="KEY", help="sign the report with this Ed25519 private key (needs --out)"
    )
    p.add_argument("--save-images", metavar="DIR", help="keep the suspect's regenerations, named by sha256")
    p.add_argument(
        "--discriminator",
        metavar="FILE",
        help="statistical level: score with this discriminator (shadow fit)",
    )
    _settings_args(p)
    _runtime_args(p)
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="zoo -> keys -> audits of infringing and innocent models")
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument("--out", default="demo-out", help="output folder (default ./demo-out)")
    p.add_argument("--cache", type=Path, help="zoo cache directory")
    p.add_argument(
        "--jobs", type=int, default=2, help="suspects fine-tuned in parallel processes (default 2)"
    )
    p.add_argument("--strategy", choices=["detection", "generation", "random"], default="generation")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("schema", help="print the report's JSON Schema")
    p.set_defaults(func=cmd_schema)

    # Commands owned by other modules register themselves here.
    from auditor.batch_cli import register as register_batch
    from auditor.evidence_cli import register as register_evidence
    from auditor.statistical_cli import register as register_statistical
    from export.cli import register as register_export

    register_evidence(sub, keys)
    register_export(sub)
    register_batch(sub)
    register_statistical(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    _quiet_third_party()
    try:
        parser = build_parser()
        args = parser.parse_args(argv)
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return args.func(args, Context(args.format))
    except AuditorError as exc:
        print(f"t2i-audit: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except SystemExit as exc:  # --help / --version
        return exc.code if isinstance(exc.code, int) else EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("t2i-audit: interrupted", file=sys.stderr)
        return 130


def main_entry() -> None:
    sys.exit(main())

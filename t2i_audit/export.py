"""`t2i-audit export` and `t2i-audit bundle-verify`: the export stage's commands.

    t2i-audit export MODEL --out BUNDLE [--precision fp32|fp16] [--trt] [--opset 17]
                     [--batch-sizes 1,16] [--height H --width W]
                     [--parity-prompts FILE] [--parity-steps 8] [--no-cpu-graphs]
                     [--validate-on cpu|auto]
    t2i-audit bundle-verify BUNDLE [--model MODEL]

Exit codes: 0 done; 2 bad input (not a pipeline, unsupported opset, --trt without
CUDA/TensorRT, a parity miss: the bundle is still written, marked failed); 1 a bundle
file that does not match its manifest.
"""

from __future__ import annotations

import argparse

from auditor.backends.engines.components import DEFAULT_OPSET
from t2i_audit._common import Context, add_command


def cmd_export(args: argparse.Namespace, ctx: Context) -> int:
    from export.exporter import check_options, export_bundle, parse_batch_sizes

    batch_sizes = parse_batch_sizes(args.batch_sizes)
    check_options(args.precision, args.opset, args.trt)  # before loading anything
    prompts = None
    if args.parity_prompts:
        from export.loop_parity import read_prompts

        prompts = read_prompts(args.parity_prompts)
    manifest = export_bundle(
        args.model,
        args.out,
        precision=args.precision,
        opset=args.opset,
        batch_sizes=batch_sizes,
        height=args.height,
        width=args.width,
        trt=args.trt,
        reporter=ctx.reporter,
        parity_prompts=prompts,
        parity_steps=args.parity_steps,
        cpu_graphs=not args.no_cpu_graphs,
        validate_on=args.validate_on,
    )
    if ctx.format == "json":
        ctx.emit_json({"bundle": str(args.out), **manifest.model_dump(mode="json")})
        return 0
    shapes = manifest.shapes
    ctx.plain(
        f"bundle {args.out}: {shapes.height}x{shapes.width}, batch sizes {list(shapes.batch_sizes)},"
        f" opset {manifest.opset}, source {manifest.source.name} ({manifest.source.digest[:16]})",
    )
    for name, record in manifest.components.items():
        ctx.plain(f"  {name:13s} {record.parity.summary()}")
    if manifest.fp16_loop_parity is not None:
        ctx.plain(f"  {'fp16 graphs':13s} {manifest.fp16_loop_parity.summary()}")
    for engine in manifest.engines:
        ctx.plain(f"  {engine.component:13s} {engine.parity.summary()} [{engine.gpu}]")
    return 0


def cmd_bundle_verify(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.backends.engines.bundle import load_bundle

    bundle = load_bundle(args.bundle, model=args.model)
    manifest = bundle.manifest
    summary = {
        "bundle": str(args.bundle),
        "source": manifest.source.model_dump(mode="json"),
        "files_verified": len(manifest.hashed_files()),
        "parity_passed": manifest.parity_passed,
        "model_checked": args.model is not None,
    }
    if ctx.format == "json":
        ctx.emit_json(summary)
    else:
        checked = f", source model {args.model} matches" if args.model else ""
        state = "passed" if manifest.parity_passed else "FAILED (engine backends fall back to torch)"
        ctx.plain(f"{args.bundle}: {summary['files_verified']} files verified{checked}; parity {state}")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "export", "export a diffusers pipeline to ONNX (and TensorRT) engines: a bundle", cmd_export
    )
    p.add_argument("model", help="diffusers Stable Diffusion folder")
    p.add_argument("--out", required=True, help="new bundle folder")
    p.add_argument(
        "--precision",
        choices=["fp32", "fp16"],
        default="fp32",
        help="fp16 adds fp16 graphs (what --backend tensorrt/onnx --dtype float16 run) beside the fp32 ones",
    )
    p.add_argument("--trt", action="store_true", help="also build TensorRT engines (CUDA host with tensorrt)")
    p.add_argument(
        "--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset, 14..20 (default {DEFAULT_OPSET})"
    )
    p.add_argument("--batch-sizes", default="1,16", help="image batch sizes to optimize for (default 1,16)")
    p.add_argument("--height", type=int, help="pixels (default: the model's)")
    p.add_argument("--width", type=int, help="pixels (default: the model's)")
    p.add_argument(
        "--no-cpu-graphs",
        action="store_true",
        help="skip ONNX Runtime's offline-optimized CPU graphs (a bundle for GPU hosts; saves minutes and GBs)",
    )
    p.add_argument(
        "--validate-on",
        choices=["cpu", "auto"],
        default="cpu",
        help="run the parity checks on the CPU, or (auto) on the CUDA provider when it works here",
    )
    p.add_argument(
        "--parity-prompts",
        metavar="FILE",
        help="--precision fp16: prompts (one a line; your key prompts are best) for the denoising-loop check",
    )
    p.add_argument(
        "--parity-steps",
        type=int,
        default=None,
        metavar="N",
        help="--precision fp16: steps of the denoising-loop check (default 8; 0 skips it)",
    )

    p = add_command(
        sub,
        "bundle-verify",
        "re-hash an engine bundle; with --model check it is the source",
        cmd_bundle_verify,
    )
    p.add_argument("bundle", help="bundle folder written by `t2i-audit export`")
    p.add_argument("--model", help="the model the bundle should have been exported from")

"""`t2i-audit batch` and `t2i-audit serve`.

batch JOB --out DIR                 audit every suspect of the job file, then write DIR/summary.json
batch JOB --out DIR --index N       audit suspect N only (or $JOB_COMPLETION_INDEX: a Kubernetes
                                    Indexed Job); exit 0 done, 2 bad input, 75 transient
batch JOB --out DIR --summarize     only build DIR/summary.json from the reports there
batch JOB --out DIR --executor ray  one Ray task per suspect
serve MODEL --port P                a model behind the AUTOMATIC1111 txt2img API, on loopback
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.errors import EXIT_OK, BadInputError, TransientError


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("batch", help="audit many suspects from a job file (resumable; see docs/batch.md)")
    p.add_argument("job", help="job file (YAML, TOML or JSON)")
    p.add_argument("--out", required=True, help="output folder: reports/, errors/, summary.json")
    p.add_argument("--index", type=int, help="audit only suspect N (default: $JOB_COMPLETION_INDEX when set)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--ray-cpus", type=int, help="CPUs of a Ray instance started here (default: all)")
    p.add_argument("--summarize", action="store_true", help="only build summary.json from existing reports")
    p.set_defaults(func=cmd_batch)

    p = sub.add_parser("serve", help="serve a model through the AUTOMATIC1111 txt2img API (loopback)")
    p.add_argument(
        "model", help="diffusers folder, single-file checkpoint (with --config) or LoRA (with --base)"
    )
    p.add_argument("--port", type=int, default=7860, help="TCP port (0: any free port; default 7860)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1, loopback only)")
    p.add_argument("--config", help="single-file checkpoint: local diffusers folder of the same architecture")
    p.add_argument("--base", help="LoRA file: the base diffusers folder")
    g = p.add_argument_group("defaults for fields a request leaves out")
    g.add_argument("--steps", type=int)
    g.add_argument("--guidance", type=float)
    g.add_argument("--scheduler")
    g.add_argument("--height", type=int)
    g.add_argument("--width", type=int)
    g = p.add_argument_group("runtime")
    g.add_argument("--device", default="auto")
    g.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    g.add_argument("--batch-size", type=int, default=1)
    g.add_argument("--backend", default="torch")
    p.set_defaults(func=cmd_serve)


# ---------------------------------------------------------------- batch


def cmd_batch(args: argparse.Namespace, ctx) -> int:
    from auditor.batch import (
        BatchRunner,
        SharedProgress,
        exit_code_of,
        job_index,
        load_job,
        write_summary,
    )
    from auditor.progress import RichReporter

    job = load_job(args.job)
    out = Path(args.out)
    if args.summarize:
        summary = write_summary(job, out)
        _print_summary(summary, ctx, out)
        return EXIT_OK
    index = job_index(len(job.entries), args.index)
    if index is not None and args.executor == "ray":
        raise BadInputError("--index: one suspect per process needs no executor; drop --executor ray")
    rich = isinstance(ctx.reporter, RichReporter)
    progress = SharedProgress(ctx.reporter.console) if rich else None
    runner = BatchRunner(job, out, progress or ctx.reporter)
    if progress is not None:
        with progress:
            outcomes = _run(runner, index, args)
    else:
        outcomes = _run(runner, index, args)
    if index is not None:
        outcome = outcomes[0]
        if ctx.format == "json":
            ctx.emit_json(outcome.to_dict())
        elif outcome.status != "failed":
            ctx.console.print(
                f"{outcome.name}: {outcome.status} ({out / 'reports' / (outcome.name + '.json')})",
                markup=False,
            )
        return _fail(outcome.exit_code, outcome.message) if outcome.status == "failed" else EXIT_OK
    summary = write_summary(job, out)
    _print_summary(summary, ctx, out)
    code = exit_code_of(outcomes)
    if code != EXIT_OK:
        failed = [o.name for o in outcomes if o.status == "failed"]
        shown = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        return _fail(
            code, f"batch: {len(failed)} of {len(outcomes)} suspects failed ({shown}); see {out / 'errors'}"
        )
    return EXIT_OK


def _run(runner, index, args):
    indices = None if index is None else [index]
    return runner.run(indices, executor=args.executor, num_cpus=args.ray_cpus, threads=args.threads)


def _fail(code: int, message: str) -> int:
    """One line on stderr and the outcome's exit code (2 or 75)."""
    error = TransientError(message) if code == 75 else BadInputError(message)
    print(f"t2i-audit: error: {error}", file=sys.stderr)
    return code


def _print_summary(summary, ctx, out: Path) -> None:
    if ctx.format == "json":
        ctx.emit_json(summary.model_dump(mode="json"))
        return
    from rich.markup import escape
    from rich.table import Table

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    table = Table(title=f"batch {summary.job}: {summary.correction} at alpha {summary.alpha:g}")
    for column in ("suspect", "status", "hits", "conf", "p", "adj. p", "verdict", "corrected"):
        table.add_column(column)
    for row in summary.suspects:
        hits = "-" if row.hits is None else f"{row.hits}/{row.num_keys}"
        status = row.status if row.status != "failed" else f"[red]failed ({row.exit_code})[/red]"
        corrected = row.corrected_verdict or "-"
        if corrected == "infringing":
            corrected = f"[bold red]{corrected}[/bold red]"
        table.add_row(
            row.name,
            status,
            hits,
            num(row.conf, ".3f"),
            num(row.p_value, ".3g"),
            num(row.adjusted_p_value, ".3g"),
            row.verdict or "-",
            corrected,
        )
    ctx.console.print(table)
    ctx.console.print(escape(summary.correction_note))
    for row in summary.suspects:
        if row.error:
            ctx.console.print(f"[red]{row.name}[/red]: {escape(row.error)}")
    ctx.console.print(f"summary written to {out / 'summary.json'}", markup=False)


# ---------------------------------------------------------------- serve


def cmd_serve(args: argparse.Namespace, ctx) -> int:
    import signal
    import threading

    from auditor.cli import _settings
    from auditor.serve import start_server, stop_server
    from auditor.suspects import open_model

    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port {args.port}: expected 0 to 65535")
    defaults = _settings(args)
    generator = open_model(
        args.model,
        config=args.config,
        base=args.base,
        backend=args.backend,
        device=args.device,
        dtype=args.dtype,
        batch_size=args.batch_size,
    )
    try:
        server, thread = start_server(generator, host=args.host, port=args.port, defaults=defaults)
    except OSError as exc:
        raise TransientError(f"serve: cannot listen on {args.host}:{args.port} ({exc.strerror})") from None
    stop = threading.Event()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print(f"serving {Path(args.model).name} on {server.url} (Ctrl-C to stop)", file=sys.stderr, flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        stop_server(server, thread)
    return EXIT_OK

"""`t2i-audit batch`: audit many suspects from a job file (docs/batch.md).

batch JOB --out DIR                 audit every suspect of the job file, then write DIR/summary.json
batch JOB --out DIR --index N       audit suspect N only (or $JOB_COMPLETION_INDEX: a Kubernetes
                                    Indexed Job); exit 0 done, 2 bad input, 75 transient
batch JOB --out DIR --summarize     only build DIR/summary.json from the reports there
batch JOB --out DIR --executor ray  one Ray task per suspect
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from auditor.errors import EXIT_OK, BadInputError, TransientError
from t2i_audit._common import Context, add_command, positive_int


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub, "batch", "audit many suspects from a job file (resumable; see docs/batch.md)", cmd_batch
    )
    p.add_argument("job", help="job file (YAML, TOML or JSON)")
    p.add_argument("--out", required=True, help="output folder: reports/, errors/, summary.json")
    p.add_argument("--index", type=int, help="audit only suspect N (default: $JOB_COMPLETION_INDEX when set)")
    p.add_argument("--executor", choices=["local", "ray"], default="local")
    p.add_argument("--ray-cpus", type=positive_int, help="CPUs of a Ray instance started here (default: all)")
    p.add_argument("--summarize", action="store_true", help="only build summary.json from existing reports")


def cmd_batch(args: argparse.Namespace, ctx: Context) -> int:
    from auditor.batch import job_index, load_job, write_summary
    from auditor.batch.lock import batch_lock, check_out_folder

    job = load_job(args.job)
    out = Path(args.out)
    if args.summarize:
        with batch_lock(out, _note):
            summary = write_summary(job, out)
        _print_summary(summary, ctx, out)
        return EXIT_OK
    index = job_index(len(job.entries), args.index)
    if index is not None and args.executor == "ray":
        raise BadInputError("--index: one suspect per process needs no executor; drop --executor ray")
    if index is not None:  # pods of an Indexed Job share OUT, one suspect each: no lock
        check_out_folder(out)
        return _run_one(job, out, index, args, ctx)
    with batch_lock(out, _note):
        return _run_all(job, out, args, ctx)


def _run_one(job, out: Path, index: int, args: argparse.Namespace, ctx: Context) -> int:
    outcome = _outcomes(job, out, index, args, ctx)[0]
    if ctx.format == "json":
        ctx.emit_json(outcome.to_dict())
    elif outcome.status != "failed":
        ctx.console.print(
            f"{outcome.name}: {outcome.status} ({out / 'reports' / (outcome.name + '.json')})",
            markup=False,
        )
    return _fail(outcome.exit_code, outcome.message) if outcome.status == "failed" else EXIT_OK


def _run_all(job, out: Path, args: argparse.Namespace, ctx: Context) -> int:
    from auditor.batch import exit_code_of, write_summary

    outcomes = _outcomes(job, out, None, args, ctx)
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


def _outcomes(job, out: Path, index: int | None, args: argparse.Namespace, ctx: Context):
    from auditor.batch import BatchRunner
    from auditor.progress import RichReporter, SharedProgress

    rich = isinstance(ctx.reporter, RichReporter)
    progress = SharedProgress(ctx.reporter.console) if rich else None
    runner = BatchRunner(job, out, progress or ctx.reporter)
    if progress is not None:
        with progress:
            outcomes = _run(runner, index, args)
    else:
        outcomes = _run(runner, index, args)
    return outcomes


def _run(runner, index, args):
    indices = None if index is None else [index]
    from auditor.batch import run_batch

    return run_batch(runner, indices, args.executor, num_cpus=args.ray_cpus, threads=args.threads)


def _note(message: str) -> None:
    """A line on stderr whatever the format (stdout may be the summary JSON): a stale lock taken over."""
    print(f"t2i-audit: note: {message}", file=sys.stderr)


def _fail(code: int, message: str) -> int:
    """One line on stderr and the outcome's exit code (2 or 75)."""
    error = TransientError(message) if code == 75 else BadInputError(message)
    print(f"t2i-audit: error: {error}", file=sys.stderr)
    return code


def _print_summary(summary, ctx: Context, out: Path) -> None:
    if ctx.format == "json":
        ctx.emit_json(summary.model_dump(mode="json"))
        return
    from rich.markup import escape
    from rich.table import Table

    from auditor.text import visible

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
            ctx.console.print(f"[red]{row.name}[/red]: {escape(visible(row.error))}")
    ctx.console.print(f"summary written to {out / 'summary.json'}", markup=False)

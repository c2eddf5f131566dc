"""`t2i-audit reproduce`: the three stages in order, each resumable, timed into the summary.

Three studies: `paper` (Figures 6-7 and Tables 1-2 of the paper), `calibration` (the
verdict's false-positive rate and power, `calibration_study`) and `laundering` (its power
against laundered infringers, `laundering_study`: the calibration study's stages on other
models, with its own report).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from auditor.fileio import atomic_write_text
from auditor.progress import Reporter
from auditor.reproduction.calibration_study import Study
from auditor.reproduction.experiment import audit_stage, build_stage, load_audits
from auditor.reproduction.report import report_stage
from auditor.reproduction.scales import STAGES, Scale


def machine() -> str:
    cores = os.cpu_count() or 0
    try:
        import torch

        threads = torch.get_num_threads()
    except ImportError:  # pragma: no cover - torch is a dependency
        threads = 0
    return f"{platform.machine()} {platform.system()}, {cores} CPU cores, torch threads {threads}"


def _timings_path(out: Path) -> Path:
    return out / "timings.json"


def read_timings(out: Path) -> dict[str, float]:
    path = _timings_path(out)
    return json.loads(path.read_text()) if path.is_file() else {}


def record_timing(out: Path, stage: str, seconds: float) -> dict[str, float]:
    path = _timings_path(out)
    timings = read_timings(out)
    # A rerun over cached work takes seconds; the longest run is the one that did the work.
    timings[stage] = max(round(seconds, 1), timings.get(stage, 0.0))
    atomic_write_text(path, json.dumps(timings, indent=2) + "\n")
    return timings


def reproduce(
    scale: Scale,
    out: Path,
    *,
    stage: str = "all",
    cache_dir: Path | None = None,
    jobs: int = 2,
    reporter: Reporter | None = None,
) -> Path | None:
    """Run one stage, or all three; returns the markdown summary's path once the report exists."""
    reporter = reporter or Reporter()
    stages = STAGES if stage == "all" else (stage,)
    out.mkdir(parents=True, exist_ok=True)
    result = None
    for name in stages:
        start = time.perf_counter()
        if name == "build":
            build_stage(scale, cache_dir, reporter, jobs)
        elif name == "audit":
            audit_stage(scale, out, cache_dir, reporter)
        else:
            families, audits = load_audits(scale, out)
            context = {"machine": machine(), "timings": read_timings(out)}
            result = report_stage(scale, families, audits, out, context)
        record_timing(out, name, time.perf_counter() - start)
        reporter.log(f"reproduce: stage {name} done in {time.perf_counter() - start:.0f} s")
    return result


def reproduce_calibration(
    study: Study,
    out: Path,
    *,
    stage: str = "all",
    cache_dir: Path | None = None,
    jobs: int = 2,
    reporter: Reporter | None = None,
    kind: str = "calibration",
) -> Path | None:
    """A calibration-style study's stages (build, audit, report), each resumable and timed.

    `kind` picks the report: "calibration" (error rates by recipe and rho) or "laundering"
    (power per attack beside the innocents' false-positive rate); build and audit are shared."""
    from auditor.reproduction import calibration_study as cs

    if kind == "laundering":
        from auditor.reproduction.laundering_report import report_stage as calibration_report
    else:
        from auditor.reproduction.calibration_report import report_stage as calibration_report

    reporter = reporter or Reporter()
    stages = STAGES if stage == "all" else (stage,)
    out.mkdir(parents=True, exist_ok=True)
    result = None
    for name in stages:
        start = time.perf_counter()
        if name == "build":
            cs.build_stage(study, cache_dir, reporter, jobs)
        elif name == "audit":
            cs.audit_stage(study, out, cache_dir, reporter, jobs)
        else:
            records = cs.load_records(study, out, cache_dir, reporter)
            result = calibration_report(
                study, records, out, {"machine": machine(), "timings": read_timings(out)}
            )
        record_timing(out, name, time.perf_counter() - start)
        reporter.log(f"{kind} study: stage {name} done in {time.perf_counter() - start:.0f} s")
    return result


def rescore_study(
    table_path: Path,
    out: Path,
    *,
    method: str | None = None,
    sets: int = 200,
    keys: int | None = None,
    reporter: Reporter | None = None,
) -> Path:
    """`reproduce --study calibration --rescore TABLE`: a registered test scored on a study table
    (auditor.reproduction.rescore), no training; writes OUT/rescore.md and OUT/rescore.csv. With
    `keys`, on the table's first `keys` keys: the audit a smaller selection would have made."""
    from auditor.errors import BadInputError
    from auditor.reproduction.candidates import compare, every_test
    from auditor.reproduction.records import first_keys, read_table
    from auditor.reproduction.rescore import rescore, write_rescore
    from auditor.verdict_tests import DEFAULT

    reporter = reporter or Reporter()
    tests = every_test()
    if method not in (None, "candidates", *tests):
        known = ", ".join(["candidates", *sorted(tests)])
        raise BadInputError(f"--test: no verdict test or candidate {method!r} (known: {known})")
    start = time.perf_counter()
    table = read_table(table_path)
    scope = f"{len(table.key_ids)} keys"
    if keys is not None:
        try:
            table, scope = first_keys(table, keys), f"the first {keys} of its {len(table.key_ids)} keys"
        except ValueError as exc:
            raise BadInputError(f"{table_path}: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    if method == "candidates":
        reporter.log(f"rescore: {len(table.models)} models of study {table.study}, {len(tests)} tests")
        try:
            text = compare(table, sets=sets)
        except ValueError as exc:
            raise BadInputError(f"{table_path}: {exc}") from None
        path = out / "comparison.md"
        seconds = time.perf_counter() - start
        atomic_write_text(
            path,
            f"# Verdict tests compared on study `{table.study}` ({scope})\n\nFalse-positive rate or power, mean over"
            f" {sets} reference sets [95% upper bound, counting models]. Machine: {machine()}; {seconds:.0f} s."
            f"\n\n{text}\n",
        )
        return path
    test = tests[method] if method else DEFAULT
    reporter.log(f"rescore: {len(table.models)} models of study {table.study} with {test.method}")
    try:
        results = rescore(table, test, sets=sets)
    except ValueError as exc:
        raise BadInputError(f"{table_path}: {exc}") from None
    context = {"sets": sets, "machine": machine(), "seconds": time.perf_counter() - start, "keys": scope}
    return write_rescore(out, table, test, results, context)

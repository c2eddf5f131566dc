"""Where a batch's audits run: here, one after the other, or as Ray tasks (one suspect each).

A Kubernetes Indexed Job needs no executor: each pod runs `t2i-audit batch --index N`
(or reads JOB_COMPLETION_INDEX), the local executor with one suspect.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from auditor.batch.job import SuspectEntry, load_job
from auditor.config import GenerationSettings
from auditor.errors import BadInputError
from auditor.progress import SharedProgress

if TYPE_CHECKING:
    from auditor.batch.runner import BatchRunner, Outcome


def run_batch(
    runner: BatchRunner, indices: Sequence[int] | None = None, executor: str = "local", **ray_options
) -> list[Outcome]:
    """Audit the job's suspects (all, or `indices`) with the named executor; outcomes in job order."""
    if executor not in ("local", "ray"):
        raise BadInputError(f"--executor {executor!r}: expected local or ray")
    known, todo = runner.start(indices)
    done = run_with_ray(runner, todo, **ray_options) if executor == "ray" else run_local(runner, todo)
    by_name = {o.name: o for o in [*known, *done]}
    order = range(len(runner.job.entries)) if indices is None else indices
    return [by_name[runner.job.entries[i].name] for i in order if runner.job.entries[i].name in by_name]


def run_local(
    runner: BatchRunner, todo: Sequence[tuple[int, SuspectEntry, GenerationSettings]]
) -> list[Outcome]:
    done = []
    reporter = runner.reporter
    advance = reporter.outer("suspects", len(todo)) if isinstance(reporter, SharedProgress) else None
    for n, (_, entry, settings) in enumerate(todo):
        reporter.log(f"auditing {entry.name} ({n + 1}/{len(todo)})")
        done.append(runner.audit_one(entry, settings))
        if advance is not None:
            advance(n + 1)
    return done


def _ray_audit(job_path: str, out: str, index: int, threads: int | None) -> dict[str, Any]:
    """One suspect in a Ray worker: same code, same files, as a local run (references from the cache)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
    from auditor.batch.runner import BatchRunner

    job = load_job(job_path)
    runner = BatchRunner(job, out)
    runner.prepare()
    return runner.audit_one(job.entries[index]).to_dict()


def task_resources(cluster: dict[str, float]) -> dict[str, float]:
    """What one suspect's Ray task asks for: a whole GPU where the cluster has any, else one CPU."""
    return {"num_gpus": 1} if cluster.get("GPU", 0) >= 1 else {"num_cpus": 1}


def run_with_ray(
    runner: BatchRunner,
    todo: Sequence[tuple[int, SuspectEntry, GenerationSettings]],
    *,
    num_cpus: int | None = None,
    threads: int | None = None,
) -> list[Outcome]:
    """One Ray task per suspect (one GPU each where the cluster has GPUs, else one CPU).

    Connects to the cluster named by RAY_ADDRESS, or starts a local instance (and stops it
    again). Workers must see OUT and the models at the same paths (a shared volume).
    """
    if not todo:
        return []
    try:
        import ray
    except ImportError:
        raise BadInputError(
            "--executor ray: the 'ray' package is not installed (pip install 't2i-auditor[ray]')"
        ) from None
    import logging

    from auditor.batch.runner import Outcome
    from auditor.errors import TransientError

    started = False
    if not ray.is_initialized():
        options: dict[str, Any] = {
            "include_dashboard": False,
            "log_to_driver": False,
            "logging_level": logging.ERROR,
        }
        if not os.environ.get("RAY_ADDRESS"):
            options["num_cpus"] = num_cpus
        ray.init(**options)
        started = True
    try:
        resources = task_resources(ray.cluster_resources())
        task = ray.remote(max_retries=0)(_ray_audit).options(**resources)
        job_path, out = str(runner.job.path.resolve()), str(runner.out.resolve())
        pending = {task.remote(job_path, out, i, threads): entry.name for i, entry, _ in todo}
        advance = (
            runner.reporter.outer("suspects (ray)", len(pending))
            if isinstance(runner.reporter, SharedProgress)
            else None
        )
        outcomes: list[Outcome] = []
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                name = pending.pop(ref)
                try:
                    outcomes.append(Outcome(**ray.get(ref)))
                except Exception as exc:  # a worker died (OOM, node lost): retry the batch later
                    first = " ".join(str(exc).split())[:200]
                    outcomes.append(
                        runner.record_error(
                            name, TransientError(f"ray task failed ({type(exc).__name__}: {first})")
                        )
                    )
                runner.reporter.log(f"{name}: {outcomes[-1].status}")
                if advance is not None:
                    advance(len(outcomes))
        return outcomes
    finally:
        if started:
            ray.shutdown()

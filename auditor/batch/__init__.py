"""Batch audits: one job file, many suspects, crash-safe outputs, a multiple-testing summary.

    job = load_job("job.yaml")                 # auditor.batch.job
    run_batch(BatchRunner(job, "runs/today"))  # auditor.batch.runner; executors local and ray
    write_summary(job, "runs/today")           # auditor.batch.summary

See docs/batch.md.
"""

from auditor.batch.executors import run_batch, run_with_ray, task_resources
from auditor.batch.job import Job, JobSpec, SuspectEntry, job_index, load_job
from auditor.batch.runner import BatchRunner, Outcome
from auditor.batch.summary import BatchSummary, exit_code_of, summarize, write_summary

__all__ = [
    "BatchRunner",
    "BatchSummary",
    "Job",
    "JobSpec",
    "Outcome",
    "SuspectEntry",
    "exit_code_of",
    "job_index",
    "load_job",
    "run_batch",
    "run_with_ray",
    "summarize",
    "task_resources",
    "write_summary",
]

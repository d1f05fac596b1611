"""``disk-plan``: what the active config's DAG will write to disk (run it before ``snakemake all``)."""

from __future__ import annotations

from emprior.core.job import Job
from emprior.pipeline.commands import command


@command("disk-plan")
def disk_plan(job: Job) -> None:
    """print the planned disk use of the config's artifacts (per experiment, variant, iteration)"""
    from emprior.report.disk import format_plan, plan

    print(format_plan(plan(job.config), job.storage, source=f"results folder {job.config.get('results')}"))


@command("disk-check")
def disk_check(job: Job) -> None:
    """Compare the config's planned disk use with the free space of its results folder: print one
    warning line if it may not fit (never fails), and keep the planned bytes for the next run."""
    import sys

    from emprior.core.artifacts import job_record
    from emprior.report.disk_check import planned_bytes, warning, write_cache

    results = job.config["results"]
    planned = planned_bytes(job.config)
    write_cache(results, job_record().get("config_file") or "config", planned)
    line = warning(results, planned)
    if line:
        print(line, file=sys.stderr)

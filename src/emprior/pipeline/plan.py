"""``disk-plan``: what the active config's DAG will write to disk (run it before ``snakemake all``)."""

from __future__ import annotations

from emprior.core.job import Job
from emprior.pipeline.commands import command


@command("disk-plan")
def disk_plan(job: Job) -> None:
    """print the planned disk use of the config's artifacts (per experiment, variant, iteration)"""
    from emprior.report.disk import format_plan, plan

    print(format_plan(plan(job.config), job.storage, source=f"results folder {job.config.get('results')}"))

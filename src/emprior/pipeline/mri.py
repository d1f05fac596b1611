"""Rules of the accelerated-MRI experiment (Sec. 5.3; rules/mri.smk): held-out reconstructions at
several accelerations, then Figs. 6 and 12-14 and the PSNR / SSIM table."""

from __future__ import annotations

import time

from emprior.core.artifacts import load_h5, save_h5
from emprior.core.job import Job
from emprior.pipeline.commands import command


@command("mri-posterior", ids=("experiment", "variant"))
def mri_posterior(job: Job, model: str, out: str) -> None:
    """rule mri_posterior: posterior samples of held-out images at each R and under a centred crop,
    beside the zero-filled inverse A^T y -> mri/posterior.h5"""
    from emprior.evaluation.mri import heldout_reconstructions, mri_settings, quality_rows

    settings = mri_settings(job.config)
    start = time.perf_counter()
    truth, recon = heldout_reconstructions(job, model, settings)
    datasets = {"truth": truth}
    for tag, r in recon.items():
        datasets.update({f"{tag}/{k}": v for k, v in r.items()})
    rows = quality_rows(truth, recon)
    save_h5(out, datasets, attrs={"tags": list(recon), "quality": rows, "heldout": settings["heldout"],
                                  "sampler": job.exp["estep"]["sampler"], "steps": job.exp["estep"]["steps"]},
            provenance=job.provenance("mri_posterior"), runtime={"seconds": time.perf_counter() - start})


@command("mri-table", ids=("experiment",), torch=False)
def mri_table(job: Job, posterior: str, out_csv: str, out_md: str) -> None:
    """rule mri_table: PSNR / SSIM of posterior means and zero-filled inverses at each R -> tables/mri.{csv,md}"""
    from emprior.report.mri_table import write_mri_table

    _, attrs = load_h5(posterior, rule="mri_posterior")
    write_mri_table(attrs["quality"], out_csv, out_md, job.experiment, job.provenance("mri_table"))


@command("mri-figures", ids=("experiment",), torch=False)
def mri_figures(job: Job, posterior: str, observations: str, clean: str, out_dir: str, samples: list[str]) -> None:
    """rule mri_figures: Figs. 6, 12, 13, 14 of the MRI experiment -> figures/fig{6,12,13,14}_<experiment>.png"""
    from emprior.report.mri_figures import write_mri_figures

    write_mri_figures(job, posterior, observations, clean, out_dir, samples)

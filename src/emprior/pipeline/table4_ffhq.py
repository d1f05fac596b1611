"""Commands of rules/table4_ffhq.smk: one FFHQ Table 4 cell (a GPU job) and the gather."""

from __future__ import annotations

import time
from pathlib import Path

from emprior.core.job import Job
from emprior.core.rng import derive_seed
from emprior.pipeline.commands import command


@command("ffhq-cell")
def ffhq_cell(job: Job, out_h5: str, task: str, method: str, steps: int, shard: int) -> None:
    """rule ffhq_cell: posterior samples of one (task, method, steps) cell of the FFHQ Table 4 (one shard)"""
    from emprior.core.artifacts import save_h5
    from emprior.nets.adm import file_sha256
    from emprior.studies import ffhq_table4 as study

    cfg = study.check_config(job.config["ffhq_benchmark"])
    start = time.perf_counter()
    out = study.run_cell(cfg, derive_seed(job.seed, "table4_ffhq"), task, method, steps, shard, str(job.device))
    prov = job.provenance("ffhq_cell", checkpoint_sha256=file_sha256(cfg["checkpoint"]))
    save_h5(out_h5, {"samples": out["samples"], "index": out["index"]},
            attrs={"task": task, "method": method, "steps": steps, "shard": shard, "sampler": cfg["sampler"],
                   "eta": cfg["eta"]},
            provenance=prov, runtime={"seconds": time.perf_counter() - start, "sampling_seconds": out["seconds"]})


@command("table4-ffhq")
def table4_ffhq(job: Job, out_csv: str, out_md: str, out_tex: str, out_images: str, out_figures: str,
                cells: list[str] = ()) -> None:
    """rule table4_ffhq: gather the FFHQ Table 4 cells (LPIPS/PSNR/SSIM beside the paper), or n/a and why"""
    from emprior.nets.adm import file_sha256
    from emprior.studies import ffhq_table4 as study

    cfg = study.check_config(job.config["ffhq_benchmark"])
    extra = {}
    if study.not_ready(cfg) is None:
        extra = {"checkpoint_sha256": file_sha256(cfg["checkpoint"]),
                 "images": study.image_manifest(cfg["images"], cfg["n_images"])}
    seed = derive_seed(job.seed, "table4_ffhq")
    cells = list(cells)
    study.gather(cfg, cells, seed, out_csv, out_md, out_tex, out_images, job.provenance("table4_ffhq", **extra))
    Path(out_figures).mkdir(parents=True, exist_ok=True)
    study.figures(cfg, cells, seed, out_figures)

"""Rules ``dataset`` and ``observe``: the clean data and the observations EM learns from."""

from __future__ import annotations

from emprior.core.job import Job
from emprior.core.log import get_logger
from emprior.pipeline.commands import command

log = get_logger("emprior.pipeline.data")


@command("dataset", ids=("experiment",))
def dataset(job: Job, out: str) -> None:
    """rule dataset: prepare the clean latents -> clean.h5"""
    from emprior.data import load_dataset
    from emprior.data.observations import save_clean

    seed = job.derive_seed("dataset")
    x = load_dataset(job.exp["dataset"], seed)
    log.info("dataset %s: %d latents of shape %s", job.experiment, len(x), tuple(x.shape[1:]))
    save_clean(out, x, job.exp["dataset"], job.provenance("dataset") | {"seed": seed}, job.storage)


@command("observe", ids=("experiment",))
def observe(job: Job, clean: str, out: str) -> None:
    """rule observe: corrupt clean.h5 -> observations.h5"""
    from emprior.data.observations import corrupt, load_clean, save_observations

    obs = corrupt(load_clean(clean), job.exp["observation"], job.seed, job.experiment)
    log.info("observe %s: %d observations y of shape %s, noise std %g", job.experiment, len(obs),
             tuple(obs.y.shape[1:]), obs.noise_std)
    save_observations(out, obs, job.provenance("observe"), job.storage)

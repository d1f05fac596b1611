"""Rules of a method's final stage (``EMMethod.final_stage``, e.g. DiffEM): after the last EM
iteration K, the E-step jobs of ``estep`` run once more with iter_K/model.pt (as iteration K + 1,
into ``<variant>/final/posterior``), ``final_model`` trains the method's final model on those samples
(``<variant>/final/model.pt``), and ``prior-samples`` and ``metrics`` evaluate it like any iteration."""

from __future__ import annotations

from pathlib import Path

from emprior.core.artifacts import load_h5, save_torch, verify
from emprior.core.errors import ArtifactError
from emprior.core.job import Job
from emprior.pipeline.commands import command
from emprior.pipeline.em import method_of


@command("final-model", ids=("experiment", "variant", "iteration"))
def final_model(job: Job, posterior: str, model: str, out: str) -> None:
    """rule final_model: the method's final model trained on the samples ``posterior`` that ``model``
    (the last iteration's) drew for the observations -> final/model.pt"""
    import torch

    method = method_of(job)
    if not method.final_stage:
        raise ArtifactError(f"{out}: method {job.var['method']!r} of variant {job.variant!r} has no final stage")
    from emprior.pipeline.em import MODEL_RULES
    from emprior.pipeline.inputs import check_input

    check_input(job, posterior, "--posterior", ("gather_posterior",), iteration=job.iteration)
    check_input(job, model, "--model", MODEL_RULES, iteration=job.iteration - 1)
    data, attrs = load_h5(posterior, rule="gather_posterior")
    # names relative to the variant's folder (e.g. final/posterior.h5, iter_003/model.pt): the bytes of
    # model.pt must not depend on where the results folder is
    source = {"posterior": _name(posterior), "posterior_sha256": verify(posterior)["sha256"],
              "model": _name(model), "model_sha256": verify(model)["sha256"],
              "drawn_at_iteration": attrs.get("iteration")}
    resume = str(out) + ".resume.pt"
    ckpt, runtime = method.final_model(job, torch.as_tensor(data["x"], dtype=torch.float32), source, resume)
    save_torch(out, ckpt, job.provenance("final_model", trained_on=source["posterior"],
                                         trained_on_sha256=source["posterior_sha256"], drawn_by=source["model"],
                                         drawn_by_sha256=source["model_sha256"]), runtime=runtime)
    Path(resume).unlink(missing_ok=True)
    Path(resume + ".prov.json").unlink(missing_ok=True)


def _name(path: str) -> str:
    p = Path(path)
    return f"{p.parent.name}/{p.name}"

"""Rules that make the paper's tables and figures from the runs and studies."""

from __future__ import annotations

import re

from emprior.core.artifacts import load_h5
from emprior.core.job import Job
from emprior.core.rng import derive_seed
from emprior.pipeline.commands import command


@command("fig2")
def fig2(job: Job, out_csv: str, out_png: str) -> None:
    """rule fig2: Sinkhorn between p(x_t|y) and q(x_t|y) (paper Fig. 2)"""
    from emprior.studies import fig2 as study

    study.main(job.config["fig2"], derive_seed(job.seed, "fig2"), out_csv, out_png, job.provenance("fig2"))


@command("table1")
def table1(job: Job, out_csv: str, out_md: str, out_tex: str, metrics: list[str]) -> None:
    """rule table1: final sample quality per variant vs paper Table 1"""
    from emprior.report.tables import table1_frame, write_table

    config = job.config
    df = table1_frame(config, metrics)
    names = config.get("tables", {}).get("table1", {}).get("experiments", [])
    budgets = "; ".join(_budget(n, config["experiments"][n]) for n in names)
    write_table(df, out_csv, out_md, out_tex, job.provenance("table1"),
                caption=f"Table 1: final models trained on corrupted data (this run: {', '.join(names)}; paper: "
                        f"CIFAR-10). Every method gets the same budget per experiment ({budgets}); a method "
                        "without an E-step (AmbientDiffusion) trains on the observations with the same M-step "
                        "budget. clean_data = clean training examples the method saw (EMDiffusion's initial "
                        "prior). Sinkhorn = debiased Sinkhorn divergence to the clean data (lower is better). "
                        "paper_* = the published number of that method at that setting, where there is one. "
                        "estep_bias2_it1 / estep_spread_it1: iteration 1's E-step against the exact "
                        "posterior under the Gaussian q_0 (an exact sampler: 0 / 1).")


def _budget(name: str, exp: dict) -> str:
    ms = exp["mstep"]
    train = f"{ms['steps']} steps" if "steps" in ms else f"{ms['epochs']} epochs"
    return (f"{name}: {exp['iterations']} iterations, each an E-step of {exp['estep']['steps']} "
            f"{exp['estep']['sampler']} steps per observation and an M-step of {train}")


@command("table4")
def table4(job: Job, out_csv: str, out_md: str) -> None:
    """rule table4: paper Table 4 at CPU scale: posterior samplers on an exact-posterior benchmark"""
    from emprior.studies import sampler_accuracy

    sampler_accuracy.main(job.config["sampler_benchmark"], derive_seed(job.seed, "table4"), out_csv, out_md,
                          job.provenance("table4"),
                          lpips_weights_dir=(job.config.get("metrics") or {}).get("lpips_weights_dir"))


@command("table5")
def table5(job: Job, out_csv: str, out_md: str) -> None:
    """rule table5: paper Table 5: time and memory per sampling step, ratios to DPS"""
    from emprior.studies import sampler_cost

    sampler_cost.main(job.config["cost_benchmark"], derive_seed(job.seed, "table5"), out_csv, out_md,
                      job.provenance("table5"))


@command("figures", ids=("experiment",))
def figures(job: Job, out: str, metrics: list[str]) -> None:
    """rule figures: metric curves along EM iterations"""
    from emprior.report.tables import metric_curves

    metric_curves(job.config, job.experiment, metrics, out, job.provenance("figures"))


@command("fig3", ids=("experiment",))
def fig3(job: Job, clean: str, out: str, samples: list[str]) -> None:
    """rule fig3: 2-d marginals of q_k along iterations (manifold)"""
    from emprior.data.observations import load_clean
    from emprior.report.tables import manifold_marginals

    by_iter = {}
    for path in samples:
        k = int(re.search(r"iter_(\d+)", str(path)).group(1))
        by_iter[k] = load_h5(path, rule="prior_samples")[0]["x"]
    manifold_marginals(by_iter, load_clean(clean), out, job.provenance("fig3"))

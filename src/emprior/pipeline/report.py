"""Rules that make the paper's tables and figures from the runs and studies."""

from __future__ import annotations

import re

from emprior.core.artifacts import load_h5
from emprior.core.job import Job
from emprior.core.rng import derive_seed
from emprior.pipeline.commands import command
from emprior.report.figures import FIG5_SAMPLES, POSTERIOR_OBSERVATIONS


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
                        "posterior under the Gaussian q_0 (an exact sampler: 0 / 1). q0_* = the first evaluated "
                        "iteration (q0_iteration: 0 where the method has an initial prior), beside the final one. "
                        "seeds = runs per row (config seeds): a number is the mean over seeds, *_ci95 the "
                        "half-width of its two-sided 95 % Student-t interval (t_{0.975,n-1} s/sqrt(n); empty for "
                        "one seed), *_per_seed each seed's value.")


def _budget(name: str, exp: dict) -> str:
    ms = exp["mstep"]
    train = f"{ms['steps']} steps" if "steps" in ms else f"{ms['epochs']} epochs"
    return (f"{name}: {exp['iterations']} iterations, each an E-step of {exp['estep']['steps']} "
            f"{exp['estep']['sampler']} steps per observation and an M-step of {train}")


@command("sampler-accuracy")
def sampler_accuracy(job: Job, out_csv: str, out_md: str) -> None:
    """rule sampler_accuracy: Table 4's CPU analogue: posterior samplers scored against exact posteriors"""
    from emprior.studies import sampler_accuracy as study

    # the seed key "table4" is kept so the observations and draws stay those of the former table4 rule
    study.main(job.config["sampler_benchmark"], derive_seed(job.seed, "table4"), out_csv, out_md,
               job.provenance("sampler_accuracy"),
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


def _labels(job: Job) -> dict[str, str]:
    """'<method label>: <variant>' of each variant of the job's experiment."""
    from emprior.methods import make_method

    exp = job.exp
    return {v: f"{make_method(cfg, exp).label}: {v}" for v, cfg in exp["variants"].items()}


@command("fig4", ids=("experiment",))
def fig4(job: Job, out: str, metrics: list[str]) -> None:
    """rule fig4: paper Fig. 4, the quality metric (FID / its CPU stand-in) along EM iterations per variant"""
    from emprior.report.tables import metric_curves

    metric_curves(job.config, job.experiment, metrics, out, job.provenance("fig4"), quality_only=True)


@command("fig5", ids=("experiment",))
def fig5(job: Job, clean: str, out: str, out_h5: str, models: list[str], samples: int = FIG5_SAMPLES) -> None:
    """rule fig5: paper Fig. 5, deterministic DDIM samples of q_k along iterations from the same noise"""
    import time

    from emprior.core.artifacts import save_h5
    from emprior.data.observations import load_clean
    from emprior.report.figures import display_range, fig5_figure, fig5_samples

    start = time.perf_counter()
    x_T, by_variant = fig5_samples(job, models, samples)
    steps = job.exp["evaluate"]["steps"]
    datasets = {"x_T": x_T}
    for v, by_k in by_variant.items():
        iters = sorted(by_k)
        datasets[f"{v}/iterations"] = iters
        datasets[f"{v}/x"] = [by_k[k] for k in iters]
    prov = job.provenance("fig5")
    save_h5(out_h5, datasets, attrs={"sampler": "ddim", "eta": 0.0, "steps": steps, "variants": list(by_variant)},
            provenance=prov, runtime={"seconds": time.perf_counter() - start})
    fig5_figure(by_variant, _labels(job), display_range(load_clean(clean)), out, prov,
                f"Fig. 5, {job.experiment}: q_k along EM iterations (rows), deterministic DDIM ({steps} steps, "
                "eta 0) from the same x_T (columns)")


@command("posterior-figure", ids=("experiment",))
def posterior_figure(job: Job, observations: str, clean: str, out: str, posteriors: list[str],
                     shown: int = POSTERIOR_OBSERVATIONS) -> None:
    """rule posterior_figure: posterior samples along EM iterations beside the observations (Figs. 8-10)"""
    from emprior.data.observations import load_clean, load_observations
    from emprior.report import figures as figs

    obs = load_observations(observations)
    x_clean = load_clean(clean)
    loaded = [(v, k, load_h5(p, rule="gather_posterior")[0]) for (v, k), p in
              figs.sorted_runs(posteriors, list(job.exp["variants"]))]
    rows = figs.pick_observations([d["index"] for _, _, d in loaded], len(obs), shown)
    by_variant: dict[str, dict[int, dict[int, object]]] = {}
    for v, k, d in loaded:
        where = {int(i): j for j, i in enumerate(d["index"])}
        by_variant.setdefault(v, {})[k] = {int(r): d["x"][where[int(r)]] for r in rows if int(r) in where}
    y_img, y_title = figs.observation_images(obs, rows)
    figs.posterior_figure(y_img, y_title, x_clean[obs.index[rows]], rows, by_variant, _labels(job),
                          figs.display_range(x_clean), out, job.provenance("posterior_figure"),
                          f"{job.experiment}: posterior samples x ~ q_(k-1)(x | y) of the E-step of iteration k")

# Tables and figures, paper values side by side.


localrules: table1, figures, fig3, fig4, posterior_figure


def is_image_experiment(name):
    return config["experiments"][base(name)]["dataset"]["name"] != "manifold"


def figure_option(key):
    from emprior.report.figures import figure_option as option

    return option(config, key)


def estep_variants(experiment):
    return [v for v in variants_of(experiment) if has_stage(experiment, v, "estep")]


def report_targets():
    targets = []
    if "fig2" in config:
        targets += [f"{R}/fig2/sinkhorn.csv", f"{R}/figures/fig2_sinkhorn.png"]
    for name, exp in config["experiments"].items():
        if exp["dataset"]["name"] == "manifold":
            targets += [f"{R}/figures/fig3_{b}.png" for b in experiment_branches(name)]
    if "sampler_benchmark" in config:
        targets += [f"{R}/tables/sampler_accuracy.{ext}" for ext in ("csv", "md")]
    if "cost_benchmark" in config:
        targets += [f"{R}/tables/table5.{ext}" for ext in ("csv", "md")]
    if "ffhq_benchmark" in config:
        targets += [f"{R}/tables/table4_ffhq.{ext}" for ext in ("csv", "md", "tex")]
    if "table1" in config.get("tables", {}):
        targets += [f"{R}/tables/table1.{ext}" for ext in ("csv", "md", "tex")]
        for exp_name in config["tables"]["table1"]["experiments"]:
            targets.append(f"{R}/figures/fig4_{exp_name}.png")  # over every seed (its band)
            for name in experiment_branches(exp_name):  # one of each per seed
                if is_image_experiment(name):
                    targets += [f"{R}/figures/fig5_{name}.png", f"{R}/figures/fig5_{name}.h5"]
                    if estep_variants(name):
                        targets.append(f"{R}/figures/posterior_{name}.png")
    return targets


def q0_metrics(experiment):
    """metrics.json of each variant's first evaluated iteration (iteration 0 where the method has q_0)."""
    return [f"{itdir(experiment, v, evaluated(experiment, v)[0])}/metrics.json" for v in variants_of(experiment)]


rule table1:
    input:
        # of every seed's branch: final iterations, iteration 1 for its E-step check against the exact
        # posterior, and the first evaluated iteration (q_0) beside the final one
        lambda wc: list(dict.fromkeys(m for e in config["tables"]["table1"]["experiments"]
                                      for b in experiment_branches(e)
                                      for m in final_metrics(b) + first_metrics(b) + q0_metrics(b))),
    output:
        csv=f"{R}/tables/table1.csv",
        md=f"{R}/tables/table1.md",
        tex=f"{R}/tables/table1.tex",
    params:
        cfg=cfg_global,
    conda:
        ENV
    log:
        f"{R}/logs/table1.log",
    shell:
        "{PY} table1 --config {params.cfg} --out-csv {output.csv} --out-md {output.md} --out-tex {output.tex}"
        " {input} > {log} 2>&1"


rule figures:
    input:
        lambda wc: all_iteration_metrics(wc.experiment),
    output:
        f"{R}/figures/{{experiment}}_metrics.png",
    params:
        cfg=cfg_global,
    conda:
        ENV
    log:
        f"{R}/logs/figures_{{experiment}}.log",
    shell:
        "{PY} figures --config {params.cfg} --experiment {wildcards.experiment} --out {output} {input}"
        " > {log} 2>&1"


rule fig3:
    input:
        clean=f"{R}/{{experiment}}/data/clean.h5",
        samples=lambda wc: [f"{itdir(wc.experiment, v, k)}/prior_samples.h5"
                            for v in variants_of(wc.experiment)[:1] for k in evaluated(wc.experiment, v)],
    output:
        f"{R}/figures/fig3_{{experiment}}.png",
    params:
        cfg=cfg_global,
    conda:
        ENV
    log:
        f"{R}/logs/fig3_{{experiment}}.log",
    shell:
        "{PY} fig3 --config {params.cfg} --experiment {wildcards.experiment} --clean {input.clean}"
        " --out {output} {input.samples} > {log} 2>&1"


rule fig4:
    input:
        # every seed's branch: the figure draws the mean and the band over seeds
        lambda wc: [m for b in experiment_branches(wc.experiment) for m in all_iteration_metrics(b)],
    output:
        f"{R}/figures/fig4_{{experiment}}.png",
    params:
        cfg=cfg_global,
    conda:
        ENV
    log:
        f"{R}/logs/fig4_{{experiment}}.log",
    shell:
        "{PY} fig4 --config {params.cfg} --experiment {wildcards.experiment} --out {output} {input}"
        " > {log} 2>&1"


rule fig5:
    # samples every q_k once more (deterministic DDIM from one x_T): a compute job like prior_samples
    input:
        clean=f"{R}/{{experiment}}/data/clean.h5",
        models=lambda wc: [f"{itdir(wc.experiment, v, k)}/model.pt" for v in variants_of(wc.experiment)
                           for k in range(first_iteration(wc.experiment, v), n_iterations(wc.experiment) + 1)],
    output:
        png=f"{R}/figures/fig5_{{experiment}}.png",
        h5=f"{R}/figures/fig5_{{experiment}}.h5",
    params:
        cfg=cfg_global,
        n=lambda wc: figure_option("fig5_samples"),
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/fig5_{{experiment}}.log",
    shell:
        "{PY} fig5 --config {params.cfg} --experiment {wildcards.experiment} --clean {input.clean}"
        " --out {output.png} --out-h5 {output.h5} --samples {params.n} --threads {threads} {input.models}"
        " > {log} 2>&1"


rule posterior_figure:
    input:
        observations=f"{R}/{{experiment}}/data/observations.h5",
        clean=f"{R}/{{experiment}}/data/clean.h5",
        posteriors=lambda wc: [f"{itdir(wc.experiment, v, k)}/posterior.h5" for v in estep_variants(wc.experiment)
                               for k in range(1, n_iterations(wc.experiment) + 1)],
    output:
        f"{R}/figures/posterior_{{experiment}}.png",
    params:
        cfg=cfg_global,
        n=lambda wc: figure_option("posterior_observations"),
    conda:
        ENV
    log:
        f"{R}/logs/posterior_figure_{{experiment}}.log",
    shell:
        "{PY} posterior-figure --config {params.cfg} --experiment {wildcards.experiment}"
        " --observations {input.observations} --clean {input.clean} --out {output} --shown {params.n}"
        " {input.posteriors} > {log} 2>&1"

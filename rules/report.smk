# Tables and figures, paper values side by side.


localrules: table1, figures, fig3


def report_targets():
    targets = []
    if "fig2" in config:
        targets += [f"{R}/fig2/sinkhorn.csv", f"{R}/figures/fig2_sinkhorn.png"]
    for name, exp in config["experiments"].items():
        if exp["dataset"]["name"] == "manifold":
            targets.append(f"{R}/figures/fig3_{name}.png")
    if "sampler_benchmark" in config:
        targets += [f"{R}/tables/table4.{ext}" for ext in ("csv", "md")]
    if "cost_benchmark" in config:
        targets += [f"{R}/tables/table5.{ext}" for ext in ("csv", "md")]
    if "table1" in config.get("tables", {}):
        targets += [f"{R}/tables/table1.{ext}" for ext in ("csv", "md", "tex")]
    return targets


rule table1:
    input:
        # final iterations, plus iteration 1 for its E-step check against the exact posterior
        lambda wc: list(dict.fromkeys(m for e in config["tables"]["table1"]["experiments"]
                                      for m in final_metrics(e) + first_metrics(e))),
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
                            for v in variants_of(wc.experiment)[:1]
                            for k in range(first_iteration(wc.experiment, v), n_iterations(wc.experiment) + 1)],
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

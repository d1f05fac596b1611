# Studies and benchmarks with known answers: Fig. 2 (posterior approximations on Gaussian mixtures),
# sampler accuracy (Table 4's CPU analogue: posterior samplers vs an exact posterior) and Table 5
# (cost of a sampling step).


rule fig2:
    output:
        csv=f"{R}/fig2/sinkhorn.csv",
        png=f"{R}/figures/fig2_sinkhorn.png",
    params:
        cfg=lambda wc: _dump({"seed": config["seed"], "results": R, "fig2": config["fig2"],
                              "experiments": {}}),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    log:
        f"{R}/logs/fig2.log",
    benchmark:
        f"{R}/benchmarks/fig2.tsv"
    shell:
        "{PY} fig2 --config {params.cfg} --out-csv {output.csv} --out-png {output.png}"
        " --threads {threads} > {log} 2>&1"


# Paper Table 4 at CPU scale: samplers scored as distributions against the exact posteriors of analytic
# priors (a Gaussian control and two Gaussian mixtures; docs/sampler-accuracy-table4.md).
rule sampler_accuracy:
    output:
        csv=f"{R}/tables/sampler_accuracy.csv",
        md=f"{R}/tables/sampler_accuracy.md",
    params:
        cfg=lambda wc: _dump({"seed": config["seed"], "results": R, "metrics": config.get("metrics", {}),
                              "sampler_benchmark": config["sampler_benchmark"], "experiments": {}}),
    # one thread: the ops are small (8x8 images), and on a busy 2-core machine 2 threads ran 6-10x slower
    threads: 1
    resources:
        mem_mb=4000,
        runtime=240,
    conda:
        ENV
    log:
        f"{R}/logs/sampler_accuracy.log",
    benchmark:
        f"{R}/benchmarks/sampler_accuracy.tsv"
    shell:
        "{PY} sampler-accuracy --config {params.cfg} --out-csv {output.csv} --out-md {output.md}"
        " --threads {threads} > {log} 2>&1"


# Paper Table 5: time and peak memory of one posterior sampling step per method, ratios to DPS.
# One thread and a job of its own would give the steadiest timings; ratios are what is compared.
rule table5:
    output:
        csv=f"{R}/tables/table5.csv",
        md=f"{R}/tables/table5.md",
    params:
        cfg=lambda wc: _dump({"seed": config["seed"], "results": R, "cost_benchmark": config["cost_benchmark"],
                              "experiments": {}}),
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    conda:
        ENV
    log:
        f"{R}/logs/table5.log",
    benchmark:
        f"{R}/benchmarks/table5.tsv"
    shell:
        "{PY} table5 --config {params.cfg} --out-csv {output.csv} --out-md {output.md}"
        " --threads {threads} > {log} 2>&1"

# Studies and benchmarks with known answers: Fig. 2 (posterior approximations on Gaussian mixtures).


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

# Paper Table 4 at paper scale: FFHQ-256 with DPS's ADM (ffhq_10m.pt), config key `ffhq_benchmark`
# (config/paper.yaml). One GPU job per (task, method, steps) cell (the 1000-step cells sharded over
# images), gathered into tables/table4_ffhq.*. Without a checkpoint or images no cell is planned and
# the gather writes the table with every value n/a and the reason.


def ffhq_cell_files():
    from emprior.studies.ffhq_table4 import cells, check_config, not_ready

    if "ffhq_benchmark" not in config:
        return []
    cfg = check_config(config["ffhq_benchmark"])
    if not_ready(cfg):
        return []
    return [f"{R}/table4_ffhq/{c['task']}/{c['slug']}/steps_{c['steps']}/shard_{c['shard']}.h5" for c in cells(cfg)]


def ffhq_method(wc):
    from emprior.studies.ffhq_table4 import cell_name

    return next(m for m in config["ffhq_benchmark"]["methods"] if cell_name(m) == wc.slug)


rule ffhq_cell:
    wildcard_constraints:
        steps=r"\d+",
        shard=r"\d+",
    output:
        h5=f"{R}/table4_ffhq/{{task}}/{{slug}}/steps_{{steps}}/shard_{{shard}}.h5",
    params:
        cfg=lambda wc: _dump({"seed": config["seed"], "results": R, "device": "cuda",
                              "ffhq_benchmark": config["ffhq_benchmark"], "experiments": {}}),
        method=ffhq_method,
    threads: 1
    # one GPU: slurm/config.yaml's set-resources (as every GPU rule)
    resources:
        mem_mb=lambda wc, attempt: 16000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/table4_ffhq/{{task}}/{{slug}}/steps_{{steps}}/shard_{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/table4_ffhq/{{task}}/{{slug}}/steps_{{steps}}/shard_{{shard}}.tsv"
    shell:
        "{PY} ffhq-cell --config {params.cfg} --out-h5 {output.h5} --task {wildcards.task}"
        " --method '{params.method}' --steps {wildcards.steps} --shard {wildcards.shard} > {log} 2>&1"


rule table4_ffhq:
    input:
        cells=ffhq_cell_files(),
    output:
        csv=f"{R}/tables/table4_ffhq.csv",
        md=f"{R}/tables/table4_ffhq.md",
        tex=f"{R}/tables/table4_ffhq.tex",
        images=f"{R}/tables/table4_ffhq_images.csv",
        figures=directory(f"{R}/figures/table4_ffhq"),  # Figs. 17-19: one PNG per task (empty when n/a)
    params:
        cfg=lambda wc: _dump({"seed": config["seed"], "results": R, "ffhq_benchmark": config["ffhq_benchmark"],
                              "experiments": {}}),
    threads: 1
    resources:
        mem_mb=16000,
        runtime=120,
    conda:
        ENV
    log:
        f"{R}/logs/table4_ffhq.log",
    benchmark:
        f"{R}/benchmarks/table4_ffhq.tsv"
    shell:
        "{PY} table4-ffhq --config {params.cfg} --out-csv {output.csv} --out-md {output.md}"
        " --out-tex {output.tex} --out-images {output.images} --out-figures {output.figures}"
        " {input.cells} > {log} 2>&1"

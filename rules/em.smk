# Expectation-maximization (Algorithm 1). Iteration k's jobs depend on iteration k-1's model through
# input functions, so the EM recursion is the DAG; the E-step is a scatter/gather over shards.


def previous_model(wc):
    return f"{itdir(wc.experiment, wc.variant, int(wc.k) - 1)}/model.pt"


def mstep_inputs(wc):
    inputs = {"posterior": f"{itdir(wc.experiment, wc.variant, wc.k)}/posterior.h5"}
    if int(wc.k) >= 2:  # iteration 1 trains a fresh network (the Gaussian q_0 has no weights)
        inputs["previous"] = previous_model(wc)
    return inputs


def shard_files(wc):
    return [f"{itdir(wc.experiment, wc.variant, wc.k)}/posterior/shard_{j}.h5"
            for j in range(n_shards(wc.experiment))]


rule init_prior:
    input:
        observations=f"{R}/{{experiment}}/data/observations.h5",
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_000/model.pt",
    params:
        cfg=cfg_em,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_000/init_prior.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_000/init_prior.tsv"
    shell:
        "{PY} init-prior --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --observations {input.observations} --out {output} --threads {threads} > {log} 2>&1"


rule estep_shard:
    input:
        model=previous_model,
        observations=f"{R}/{{experiment}}/data/observations.h5",
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/posterior/shard_{{shard}}.h5",
    params:
        cfg=cfg_em,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/estep_shard_{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_{{k}}/estep_shard_{{shard}}.tsv"
    shell:
        "{PY} estep --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {wildcards.k} --shard {wildcards.shard} --model {input.model}"
        " --observations {input.observations} --out {output} --threads {threads} > {log} 2>&1"


rule gather_posterior:
    input:
        shard_files,
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/posterior.h5",
    params:
        cfg=cfg_em,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/gather_posterior.log",
    shell:
        "{PY} gather --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {wildcards.k} --out {output} {input} > {log} 2>&1"


rule mstep:
    input:
        unpack(mstep_inputs),
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/model.pt",
    params:
        cfg=cfg_em,
        previous=lambda wc, input: f"--previous {input.previous}" if "previous" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/mstep.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_{{k}}/mstep.tsv"
    shell:
        "{PY} mstep --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {wildcards.k} --posterior {input.posterior} {params.previous} --out {output}"
        " --threads {threads} > {log} 2>&1"

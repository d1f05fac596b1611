# A method's final stage (EMMethod.final_stage; DiffEM's, danialht/DiffEM train_uncond.py): after the
# last EM iteration K, the last model draws the reconstructions once more for every observation
# (the E-step jobs, run as iteration K + 1 into <variant>/final/posterior/), a final model is trained
# on them (final/model.pt: DiffEM's fresh unconditional model), then sampled and scored like any
# iteration (final/prior_samples.h5, final/metrics.json). Table 1 reads final/metrics.json for such a
# variant (final_metrics in rules/common.smk).


def final_dir(experiment, variant):
    return f"{R}/{experiment}/{variant}/final"


def final_iteration(wc):
    """The iteration id of the final stage's jobs (random streams, records): K + 1."""
    return n_iterations(wc.experiment) + 1


def last_model(wc):
    return f"{itdir(wc.experiment, wc.variant, n_iterations(wc.experiment))}/model.pt"


def final_variants(experiment):
    return [v for v in variants_of(experiment) if method(experiment, v).final_stage]


def all_final_targets(experiment):
    """final/metrics.json and the final E-step shards (targets, like every iteration's) of each final-stage variant."""
    return [f for v in final_variants(experiment)
            for f in [f"{final_dir(experiment, v)}/metrics.json"]
            + [f"{final_dir(experiment, v)}/posterior/shard_{j}.h5" for j in range(n_shards(experiment))]]


def final_metrics_inputs(wc):
    d = final_dir(wc.experiment, wc.variant)
    inputs = {"model": f"{d}/model.pt", "samples": f"{d}/prior_samples.h5", "posterior": f"{d}/posterior.h5",
              "clean": f"{R}/{wc.experiment}/data/clean.h5",
              "observations": f"{R}/{wc.experiment}/data/observations.h5"}
    if fid_on(wc.experiment):
        inputs["fid_reference"] = f"{R}/{wc.experiment}/data/fid_reference.h5"
    return inputs


rule final_estep_shard:
    input:
        model=last_model,
        observations=f"{R}/{{experiment}}/data/observations.h5",
    output:
        f"{R}/{{experiment}}/{{variant}}/final/posterior/shard_{{shard}}.h5",
    params:
        cfg=cfg_em,
        k=final_iteration,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
        slurm_extra=SIGTERM_EARLY,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/final/estep_shard_{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/final/estep_shard_{{shard}}.tsv"
    shell:
        "{PY} estep --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {params.k} --shard {wildcards.shard} --model {input.model}"
        " --observations {input.observations} --out {output} --threads {threads} > {log} 2>&1"


rule final_gather_posterior:
    input:
        lambda wc: [f"{final_dir(wc.experiment, wc.variant)}/posterior/shard_{j}.h5"
                    for j in range(n_shards(wc.experiment))],
    output:
        f"{R}/{{experiment}}/{{variant}}/final/posterior.h5",
    params:
        cfg=cfg_em,
        k=final_iteration,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/final/gather_posterior.log",
    shell:
        "{PY} gather --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {params.k} --out {output} {input} > {log} 2>&1"


rule final_model:
    input:
        posterior=f"{R}/{{experiment}}/{{variant}}/final/posterior.h5",
        model=last_model,
    output:
        f"{R}/{{experiment}}/{{variant}}/final/model.pt",
    params:
        cfg=cfg_em,
        k=final_iteration,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
        slurm_extra=SIGTERM_EARLY,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/final/final_model.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/final/final_model.tsv"
    shell:
        "{PY} final-model --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {params.k} --posterior {input.posterior} --model {input.model} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule final_prior_samples:
    input:
        model=f"{R}/{{experiment}}/{{variant}}/final/model.pt",
    output:
        f"{R}/{{experiment}}/{{variant}}/final/prior_samples.h5",
    params:
        cfg=cfg_eval,
        k=final_iteration,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/final/prior_samples.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/final/prior_samples.tsv"
    shell:
        "{PY} prior-samples --config {params.cfg} --experiment {wildcards.experiment}"
        " --variant {wildcards.variant} --iteration {params.k} --model {input.model} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule final_iteration_metrics:
    input:
        unpack(final_metrics_inputs),
    output:
        f"{R}/{{experiment}}/{{variant}}/final/metrics.json",
    params:
        cfg=cfg_eval,
        k=final_iteration,
        fid=lambda wc, input: f"--fid-reference {input.fid_reference}" if "fid_reference" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/final/iteration_metrics.log",
    shell:
        "{PY} metrics --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {params.k} --model {input.model} --samples {input.samples} --clean {input.clean}"
        " --observations {input.observations} --posterior {input.posterior} {params.fid} --out {output}"
        " --threads {threads} > {log} 2>&1"

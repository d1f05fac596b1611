# Expectation-maximization (Algorithm 1). Iteration k's jobs depend on iteration k-1's model through
# input functions, so the EM recursion is the DAG; the E-step is a scatter/gather over shards. Which
# jobs exist follows the variant's EM method's stages (init, estep, mstep): a method without an
# E-step trains on the observations and has no estep_shard / gather_posterior jobs.


# On SLURM: SIGTERM 5 minutes before the time limit, so that estep / mstep save their progress and exit
# 143 for the retry to continue (emprior.core.preempt; slurm/config.yaml explains TERM@ vs B:TERM@).
# Other executors ignore it.
SIGTERM_EARLY = "--signal=TERM@300"


def optional_inputs(*names):
    """``--name path`` for each of ``names`` that the rule's input function gave."""
    return lambda wc, input: " ".join(f"--{n} {input[n]}" for n in names if n in input.keys())


def previous_model(wc):
    return f"{itdir(wc.experiment, wc.variant, int(wc.k) - 1)}/model.pt"


def mstep_inputs(wc):
    if has_stage(wc.experiment, wc.variant, "estep"):
        inputs = {"posterior": f"{itdir(wc.experiment, wc.variant, wc.k)}/posterior.h5"}
    else:
        inputs = {"observations": f"{R}/{wc.experiment}/data/observations.h5"}
    if method(wc.experiment, wc.variant).uses_previous(int(wc.k)):  # DiEM: a fresh net at k = 1 (q_0 is Gaussian)
        inputs["previous"] = previous_model(wc)
    return inputs


def shard_files(wc):
    return [f"{itdir(wc.experiment, wc.variant, wc.k)}/posterior/shard_{j}.h5"
            for j in range(n_shards(wc.experiment))]


def mstep_gpus(wc):
    """GPUs of the M-step job (``mstep.gpus``, default 1): SLURM's --gpus, and the launcher's processes."""
    return int(exp_cfg(wc)["mstep"].get("gpus", 1))


def mstep_launcher(wc):
    """``python -m emprior`` for one GPU; torchrun with one process per GPU (DDP, one node) for several."""
    n = mstep_gpus(wc)
    return PY if n == 1 else f"torchrun --standalone --nproc-per-node {n} -m emprior"


def init_inputs(wc):
    inputs = {"observations": f"{R}/{wc.experiment}/data/observations.h5"}
    if method(wc.experiment, wc.variant).init_needs_clean:  # e.g. EMDiffusion's clean subset
        inputs["clean"] = f"{R}/{wc.experiment}/data/clean.h5"
    return inputs


def init_sampled(wc):
    return exp_cfg(wc)["init"].get("estimator") == "sampled"


rule init_prior:
    input:
        unpack(init_inputs),
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_000/model.pt",
    params:
        cfg=cfg_em,
        inputs=optional_inputs("clean"),
    threads: 1
    resources:
        # the sampled (Monte Carlo) Gaussian EM of large latents (fastMRI: 4096 x 320^2 samples) gets a GPU
        # and more memory; the dense one none
        mem_mb=lambda wc, attempt: (16000 if init_sampled(wc) else 4000) * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
        gpu=lambda wc: 1 if init_sampled(wc) else 0,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_000/init_prior.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_000/init_prior.tsv"
    shell:
        "{PY} init-prior --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --observations {input.observations} {params.inputs} --out {output} --threads {threads} > {log} 2>&1"


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
        slurm_extra=SIGTERM_EARLY,
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
        inputs=optional_inputs("posterior", "observations", "previous"),
        launcher=mstep_launcher,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 240 * attempt,
        # here, not in slurm/config.yaml's set-resources (which would override it): read from the config
        gpu=mstep_gpus,
        slurm_extra=SIGTERM_EARLY,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/mstep.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_{{k}}/mstep.tsv"
    shell:
        "{params.launcher} mstep --config {params.cfg} --experiment {wildcards.experiment}"
        " --variant {wildcards.variant}"
        " --iteration {wildcards.k} {params.inputs} --out {output}"
        " --threads {threads} > {log} 2>&1"

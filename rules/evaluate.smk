# Per-iteration evaluation: unconditional prior samples and the audit record metrics.json, for the
# iterations that evaluate.iterations selects. With evaluate.shards > 1 the prior samples are a
# scatter/gather like the E-step's: prior_samples_shard -> gather_prior_samples.

def fid_on(experiment):
    return bool(config["experiments"][base(experiment)]["evaluate"].get("fid", False))


def inception_weights(wc=None):
    """metrics.inception_weights, or torch.hub's cache when unset (resolved once, kept with the plan)."""
    return PLAN.inception_weights


def fid_reference_inputs(wc):
    # The weights are an input only when present: the file appearing changes the job's input set, a new
    # version is newer than the output, and either reruns this job and the metrics jobs after it only.
    inputs = {"clean": f"{R}/{wc.experiment}/data/clean.h5"}
    if Path(inception_weights()).is_file():
        inputs["weights"] = inception_weights()
    return inputs


def metrics_inputs(wc):
    d = itdir(wc.experiment, wc.variant, wc.k)
    inputs = {
        "model": f"{d}/model.pt",
        "samples": f"{d}/prior_samples.h5",
        "clean": f"{R}/{wc.experiment}/data/clean.h5",
        "observations": f"{R}/{wc.experiment}/data/observations.h5",
    }
    if int(wc.k) >= 1 and has_stage(wc.experiment, wc.variant, "estep"):
        inputs["posterior"] = f"{d}/posterior.h5"
    if int(wc.k) == 1 and method(wc.experiment, wc.variant).estep_check:
        inputs["estep_check"] = f"{d}/estep_check.json"
    if fid_on(wc.experiment):
        inputs["fid_reference"] = f"{R}/{wc.experiment}/data/fid_reference.h5"
    return inputs


def prior_shard_files(wc):
    return [f"{itdir(wc.experiment, wc.variant, wc.k)}/prior_samples/shard_{j}.h5"
            for j in range(n_prior_shards(wc.experiment))]


def experiments_where(sharded):
    """Regex of the experiments whose prior samples are (not) sharded: rule prior_samples makes
    prior_samples.h5 for evaluate.shards = 1, gather_prior_samples for more (never both)."""
    names = [e for e in config["experiments"] if (n_prior_shards(e) > 1) == sharded]
    # each name with its seed branches (<experiment>/seed_<s>)
    return f"(?:{'|'.join(names)}){BRANCH_SUFFIX}" if names else "(?!)"  # (?!): matches nothing


rule fid_reference:
    # evaluate.fid only: mean and covariance of the clean images' Inception features, computed once and
    # reused by every iteration's metrics job (emprior.evaluation.metrics.fid_reference). Without the
    # weights file it records the reason (FID/IS n/a), so every other metric is still computed.
    input:
        unpack(fid_reference_inputs),
    output:
        f"{R}/{{experiment}}/data/fid_reference.h5",
    params:
        cfg=cfg_data,
        weights=inception_weights,  # a new path reruns the job
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/fid_reference.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/fid_reference.tsv"
    shell:
        "{PY} fid-reference --config {params.cfg} --experiment {wildcards.experiment} --clean {input.clean}"
        " --weights {params.weights:q} --out {output} --threads {threads} > {log} 2>&1"


rule prior_samples:
    input:
        model=f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/model.pt",
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples.h5",
    wildcard_constraints:
        experiment=experiments_where(sharded=False),
    params:
        cfg=cfg_eval,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples.tsv"
    shell:
        "{PY} prior-samples --config {params.cfg} --experiment {wildcards.experiment}"
        " --variant {wildcards.variant} --iteration {wildcards.k} --model {input.model} --out {output}"
        " --threads {threads} > {log} 2>&1"


rule prior_samples_shard:
    # evaluate.shards > 1: shard j of the prior samples, its own random stream (emprior.evaluation.prior_shards)
    input:
        model=f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/model.pt",
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples/shard_{{shard}}.h5",
    params:
        cfg=cfg_eval,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples_shard_{{shard}}.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples_shard_{{shard}}.tsv"
    shell:
        "{PY} prior-samples-shard --config {params.cfg} --experiment {wildcards.experiment}"
        " --variant {wildcards.variant} --iteration {wildcards.k} --shard {wildcards.shard} --model {input.model}"
        " --out {output} --threads {threads} > {log} 2>&1"


rule gather_prior_samples:
    input:
        prior_shard_files,
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/prior_samples.h5",
    wildcard_constraints:
        experiment=experiments_where(sharded=True),
    params:
        cfg=cfg_eval,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/gather_prior_samples.log",
    shell:
        "{PY} gather-prior-samples --config {params.cfg} --experiment {wildcards.experiment}"
        " --variant {wildcards.variant} --iteration {wildcards.k} --out {output} {input} > {log} 2>&1"


rule estep_check:
    # Iteration 1 only: q_0 is Gaussian, so the E-step's target is closed-form (emprior.evaluation.estep_check).
    # Settings: evaluate.estep_check, so changing them reruns no EM job.
    input:
        model=f"{R}/{{experiment}}/{{variant}}/iter_000/model.pt",
        observations=f"{R}/{{experiment}}/data/observations.h5",
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_001/estep_check.json",
    params:
        cfg=cfg_eval,
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 120 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_001/estep_check.log",
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/iter_001/estep_check.tsv"
    shell:
        "{PY} estep-check --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --model {input.model} --observations {input.observations} --out {output} --threads {threads} > {log} 2>&1"


rule iteration_metrics:
    input:
        unpack(metrics_inputs),
    output:
        f"{R}/{{experiment}}/{{variant}}/iter_{{k}}/metrics.json",
    params:
        cfg=cfg_eval,
        inputs=optional_inputs("posterior"),
        check=lambda wc, input: f"--estep-check {input.estep_check}" if "estep_check" in input.keys() else "",
        fid=lambda wc, input: f"--fid-reference {input.fid_reference}" if "fid_reference" in input.keys() else "",
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 4000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/iter_{{k}}/iteration_metrics.log",
    shell:
        "{PY} metrics --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --iteration {wildcards.k} --model {input.model} --samples {input.samples} --clean {input.clean}"
        " --observations {input.observations} {params.inputs} {params.check} {params.fid} --out {output}"
        " --threads {threads} > {log} 2>&1"

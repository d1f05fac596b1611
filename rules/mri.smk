# Accelerated MRI (Sec. 5.3, Figs. 6 and 12-14, docs/mri.md): the `mri` config section names the
# experiment and variant; held-out reconstructions at several R from the final prior, then figures and
# the PSNR / SSIM table. No `mri` section: no rules of this file are targets.


localrules: mri_figures, mri_table

MRI_FIGURES = ("fig6", "fig12", "fig13", "fig14")


@functools.lru_cache(maxsize=None)
def _mri_config():
    s = config["mri"]
    cfg = job_config(config, s["experiment"], s["variant"], drop=("metrics",))
    cfg["mri"] = s
    return _dump(cfg)


def mri_targets():
    if "mri" not in config:
        return []
    e = config["mri"]["experiment"]
    figs = [f"{R}/figures/{f}_{e}.png" for f in MRI_FIGURES]
    return figs + [f"{R}/tables/mri.csv", f"{R}/tables/mri.md"]


def mri_final_model(wc):
    s = config["mri"]
    return f"{itdir(s['experiment'], s['variant'], n_iterations(s['experiment']))}/model.pt"


def mri_prior_samples(wc):
    s = config["mri"]
    return [f"{itdir(s['experiment'], s['variant'], k)}/prior_samples.h5" for k in evaluated(s["experiment"], s["variant"])]


rule mri_posterior:
    input:
        model=mri_final_model,
    output:
        f"{R}/{{experiment}}/{{variant}}/mri/posterior.h5",
    params:
        cfg=lambda wc: _mri_config(),
    threads: 1
    resources:
        mem_mb=lambda wc, attempt: 8000 * attempt,
        runtime=lambda wc, attempt: 60 * attempt,
    benchmark:
        f"{R}/benchmarks/{{experiment}}/{{variant}}/mri_posterior.tsv"
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/{{variant}}/mri_posterior.log",
    shell:
        "{PY} mri-posterior --config {params.cfg} --experiment {wildcards.experiment} --variant {wildcards.variant}"
        " --model {input.model} --out {output} --threads {threads} > {log} 2>&1"


rule mri_table:
    input:
        lambda wc: f"{R}/{config['mri']['experiment']}/{config['mri']['variant']}/mri/posterior.h5",
    output:
        csv=f"{R}/tables/mri.csv",
        md=f"{R}/tables/mri.md",
    params:
        cfg=lambda wc: _mri_config(),
        experiment=lambda wc: config["mri"]["experiment"],
    conda:
        ENV
    log:
        f"{R}/logs/mri_table.log",
    shell:
        "{PY} mri-table --config {params.cfg} --experiment {params.experiment} --posterior {input}"
        " --out-csv {output.csv} --out-md {output.md} > {log} 2>&1"


rule mri_figures:
    input:
        posterior=f"{R}/{{experiment}}/{config['mri']['variant'] if 'mri' in config else 'none'}/mri/posterior.h5",
        observations=f"{R}/{{experiment}}/data/observations.h5",
        clean=f"{R}/{{experiment}}/data/clean.h5",
        samples=mri_prior_samples,
    output:
        [f"{R}/figures/{f}_{{experiment}}.png" for f in MRI_FIGURES],
    params:
        cfg=lambda wc: _mri_config(),
        out_dir=f"{R}/figures",
    conda:
        ENV
    log:
        f"{R}/logs/mri_figures_{{experiment}}.log",
    shell:
        "{PY} mri-figures --config {params.cfg} --experiment {wildcards.experiment} --posterior {input.posterior}"
        " --observations {input.observations} --clean {input.clean} --out-dir {params.out_dir}"
        " {input.samples} > {log} 2>&1"

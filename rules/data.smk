# Dataset preparation and corruption (login-node local rules: they may download and checksum data).


localrules: dataset, observe


rule dataset:
    output:
        f"{R}/{{experiment}}/data/clean.h5",
    params:
        cfg=cfg_data,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/dataset.log",
    shell:
        "{PY} dataset --config {params.cfg} --experiment {wildcards.experiment} --out {output} > {log} 2>&1"


rule observe:
    input:
        clean=f"{R}/{{experiment}}/data/clean.h5",
    output:
        f"{R}/{{experiment}}/data/observations.h5",
    params:
        cfg=cfg_data,
    conda:
        ENV
    log:
        f"{R}/logs/{{experiment}}/observe.log",
    shell:
        "{PY} observe --config {params.cfg} --experiment {wildcards.experiment} --clean {input.clean}"
        " --out {output} > {log} 2>&1"

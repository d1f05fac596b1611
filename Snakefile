# emprior: learning diffusion priors from corrupted observations by expectation-maximization.
#
#   snakemake -c all all                  CPU preset (config/config.yaml), minutes on a laptop
#   snakemake --profile slurm all         paper scale (config/paper.yaml) on a SLURM GPU cluster
#
# The DAG: dataset -> observations.h5 -> iter_000 (Gaussian EM) -> for k = 1..K:
#   iter_k/posterior/shard_j.h5 (E-step, scattered) -> iter_k/posterior.h5 (gathered)
#   -> iter_k/model.pt (M-step from iter_{k-1}) -> iter_k/prior_samples.h5 -> iter_k/metrics.json
# -> tables/, figures/. Rules are thin: every science step is one `python -m emprior ...` call.

from snakemake.utils import min_version

min_version("9.0")

# With --configfile(s) on the command line (e.g. the slurm profile's config/paper.yaml) only those
# files are used; otherwise the CPU preset.
if not workflow.config_settings.configfiles:
    configfile: "config/config.yaml"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/em.smk"
include: "rules/diffem.smk"
include: "rules/evaluate.smk"
include: "rules/benchmark.smk"
include: "rules/report.smk"
include: "rules/table4_ffhq.smk"
include: "rules/mri.smk"


localrules: all


rule all:
    input:
        all_targets(),
        mri_targets(),
    default_target: True

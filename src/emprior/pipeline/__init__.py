"""One function per Snakemake rule, and the ``python -m emprior`` CLI generated from them."""

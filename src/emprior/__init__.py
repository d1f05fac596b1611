"""emprior: learning diffusion priors from corrupted observations by expectation-maximization.

A reproducible benchmark suite for DiEM with moment matching posterior sampling (MMPS) and its
peers. See the README for the Snakemake workflow that drives this package.
"""

__version__ = "0.1.0"

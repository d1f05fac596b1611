"""Evaluation metrics: image quality (PSNR, SSIM, LPIPS, FID/IS) and Sinkhorn divergences."""

from emprior.evaluation.metrics.images import (
    INCEPTION_WEIGHTS,
    LPIPS_BACKBONES,
    MetricUnavailable,
    lpips_distance,
    psnr,
    ssim,
)

__all__ = ["INCEPTION_WEIGHTS", "LPIPS_BACKBONES", "MetricUnavailable", "lpips_distance", "psnr", "ssim"]

try:  # metrics/sinkhorn.py is owned by another module; keep this package importable without it
    from emprior.evaluation.metrics.sinkhorn import debiased_to_reference, regularized_ot, sinkhorn_divergence
except ImportError:  # pragma: no cover
    pass
else:
    __all__ += ["debiased_to_reference", "regularized_ot", "sinkhorn_divergence"]

"""TMPD, Tweedie moment projected diffusion (Boys et al. 2023); no options.

A V A^T (V = sigma^2 J) replaced by diag(A V A^T 1), its row sums
(one VJP), so the system is diagonal; then x_hat + sigma^2 J^T A^T v (second VJP). Exact
when A V A^T is diagonal (e.g. A and Sigma diagonal), their stated validity case.
"""

from __future__ import annotations

import torch

from emprior.posterior.base import POSTERIOR_SAMPLERS, PosteriorDenoiser, col

__all__ = ["TMPD"]


@POSTERIOR_SAMPLERS.register("tmpd")
class TMPD(PosteriorDenoiser):
    """Tweedie moment projected diffusion (Boys et al. 2023), row-sum diagonal approximation::

        c = A V A^T 1 = sigma^2 A J^T A^T 1                   (one VJP, J symmetric as in MMPS)
        v = (y - A x_hat) / (noise_std^2 + c)                  (elementwise)
        E[x | x_t, y] ~ x_hat + sigma^2 J^T A^T v              (second VJP)

    Entries with noise_std^2 + c <= 0 or non-finite (possible: row sums of a non-diagonal A V A^T
    may be negative) get v = 0 (that observation is ignored for the step) and the sample counts as
    a breakdown.
    """

    def _estimate(self, x_t, sigma, y):
        x_hat, vjp = self._linearize(x_t, sigma)
        x_hat_d = x_hat.detach()
        s2x = col(sigma**2, x_t)
        b = y - self.op.A(x_hat_d)
        c = self.op.A(s2x * vjp(self.op.At(torch.ones_like(y))))
        den = self.noise_std**2 + c
        good = (den > 0) & torch.isfinite(den)
        v = torch.where(good, b / torch.where(good, den, torch.ones_like(den)), torch.zeros_like(b))
        bad = (~good & (b != 0)).reshape(b.shape[0], -1).any(dim=1)
        self.stats["breakdowns"] += int(bad.sum())
        out = x_hat_d + s2x * vjp(self.op.At(v))
        return self._finalize(out, x_hat_d)

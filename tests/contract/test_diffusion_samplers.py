"""Contract of every registered diffusion sampler: with the exact denoiser of a Gaussian prior
N(mu, s^2 I), its reverse process from x_T ~ N(0, sigma_max^2 I) draws samples whose mean and
variance match the prior's within Monte-Carlo error (plus the few per cent that 256 steps of
the discretisation cost), and the
same generator seed gives the same samples."""

import pytest
import torch

from emprior.diffusion import DIFFUSION_SAMPLERS, Schedule, sample_prior
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian

MU, S, N = 1.5, 0.5, 4096


@pytest.mark.parametrize("name", DIFFUSION_SAMPLERS.names())
def test_samples_a_gaussian_prior(name):
    d = 2
    prior = LowRankGaussian(mean=torch.full((d,), MU, dtype=torch.float64), U=torch.eye(d, 1, dtype=torch.float64),
                            s=torch.zeros(1, dtype=torch.float64), tau=S**2, event_shape=(d,))
    den = GaussianDenoiser(prior)
    sched = Schedule(sigma_min=1e-3, sigma_max=20.0)
    opts = {"corrections": 1} if "corrections" in DIFFUSION_SAMPLERS.option_schemas()[name] else {}
    x = sample_prior(den, N, (d,), sched, 256, name, torch.Generator().manual_seed(0), dtype=torch.float64, **opts)
    assert x.shape == (N, d) and torch.isfinite(x).all()
    se_mean = S / N**0.5
    assert abs(float(x.mean()) - MU) < 5 * se_mean + 0.02
    assert abs(float(x.var()) / S**2 - 1) < 0.1
    again = sample_prior(den, N, (d,), sched, 256, name, torch.Generator().manual_seed(0), dtype=torch.float64,
                         **opts)
    assert torch.equal(x, again)

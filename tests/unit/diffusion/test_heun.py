"""The Heun sampler (EDM Algorithm 1): its grid is EDM Eq. 5 and it is second order on a Gaussian prior,
where the probability-flow ODE has a closed-form solution."""

import math

import numpy as np
import torch

from emprior.diffusion import DIFFUSION_SAMPLERS, Schedule, sample
from emprior.diffusion.heun import rho_grid
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian

MU, S = 0.7, 0.5


def _prior(d=3):
    return LowRankGaussian(mean=torch.full((d,), MU, dtype=torch.float64), U=torch.eye(d, 1, dtype=torch.float64),
                           s=torch.zeros(1, dtype=torch.float64), tau=S**2, event_shape=(d,))


def test_grid_is_edm_eq5():
    g = rho_grid(0.002, 80.0, 17, 7.0)
    # EDM's num_steps = 18 levels (eval.py of ambient-diffusion): i/(18 - 1)
    i = np.arange(18)
    ref = (80 ** (1 / 7) + i / 17 * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
    np.testing.assert_allclose(g.numpy(), ref, rtol=1e-12)
    assert g[0] == 80.0 and g[-1] == 0.002 and bool((g[1:] < g[:-1]).all())


def test_registered_and_deterministic():
    assert "heun" in DIFFUSION_SAMPLERS.names()
    den, sched = GaussianDenoiser(_prior()), Schedule(1e-2, 10.0)
    x_T = 10.0 * torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    a = sample(den, x_T, sched, 8, "heun", generator=torch.Generator().manual_seed(0))
    b = sample(den, x_T, sched, 8, "heun", generator=torch.Generator().manual_seed(99))
    assert torch.equal(a, b)  # no noise drawn


def test_second_order_on_gaussian_prior():
    """For N(mu, s^2 I) the ODE dx/dsigma = (x - D(x, sigma))/sigma has the exact solution
    x(sigma) = mu + (x_T - mu) sqrt(s^2 + sigma^2)/sqrt(s^2 + sigma_max^2); the error at sigma_min must
    fall like steps^-2."""
    den, smin, smax = GaussianDenoiser(_prior()), 1e-2, 10.0
    sched = Schedule(smin, smax)
    x_T = smax * torch.randn(64, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = MU + (x_T - MU) * math.sqrt(S**2 + smin**2) / math.sqrt(S**2 + smax**2)
    steps = [8, 16, 32, 64]
    errs = [float((sample(den, x_T, sched, n, "heun", final_denoise=False) - exact).abs().max()) for n in steps]
    slope = np.polyfit(np.log(steps), np.log(errs), 1)[0]
    assert -2.3 < slope < -1.7, (errs, slope)
    assert errs[-1] < 5e-3

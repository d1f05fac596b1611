"""VP -> VE wrapper of a pretrained noise predictor: Tweedie on a Gaussian, DDPM == VP DDIM(eta=1), respacing."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from emprior.diffusion.samplers import DIFFUSION_SAMPLERS, sample
from emprior.priors.adm import ADMDenoiser, RespacedVPSchedule, linear_alphas_cumprod, space_timesteps

ABAR = linear_alphas_cumprod()


class GaussianEps(nn.Module):
    """The exact VP noise predictor of x ~ N(mu, s0^2 I): E[z | x_t] = sqrt(1-a)(x_t - sqrt(a) mu)/(a s0^2 + 1 - a);
    6 output channels like the ADM (the last 3 garbage), float64."""

    def __init__(self, mu, s0):
        super().__init__()
        self.mu, self.s0 = mu, s0

    def forward(self, x, t):
        a = torch.as_tensor(ABAR, dtype=x.dtype)[t].view(-1, 1, 1, 1)
        eps = (1 - a).sqrt() * (x - a.sqrt() * self.mu) / (a * self.s0**2 + 1 - a)
        return torch.cat([eps, torch.full_like(eps, 7.0)], dim=1)


def test_linear_schedule_and_respacing_match_guided_diffusion():
    assert ABAR[0] == pytest.approx(1 - 1e-4) and ABAR[-1] == pytest.approx(4.036e-5, rel=1e-3)
    assert space_timesteps(1000, 10) == list(range(0, 1000, 111))
    t100 = space_timesteps(1000, 100)
    assert len(t100) == 100 and t100[0] == 0 and t100[-1] == 999 and t100[1] == 10 and t100[50] == 505
    assert space_timesteps(1000, 1000) == list(range(1000))
    sch = RespacedVPSchedule()
    grid = sch.discretize(10)
    assert len(grid) == 11 and grid[-1] == 0 and torch.all(grid[:-1] > grid[1:])
    np.testing.assert_allclose(grid[:-1].numpy(), np.sqrt((1 - ABAR) / ABAR)[list(range(999, -1, -111))])
    assert sch.sigma_min == pytest.approx(math.sqrt(1e-4 / (1 - 1e-4)))


def test_wrapper_is_tweedie_on_a_gaussian_at_several_sigma():
    mu, s0 = 0.3, 0.5
    d = ADMDenoiser(GaussianEps(mu, s0), clip=False)
    sig = torch.as_tensor(d.schedule.sigmas[[0, 10, 250, 600, 999]], dtype=torch.float64)
    x = torch.randn(5, 3, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    want = mu + s0**2 / (s0**2 + sig**2).view(-1, 1, 1, 1) * (x - mu)  # E[x | x + sigma z]
    torch.testing.assert_close(d(x, sig), want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(d(x, torch.zeros(5, dtype=torch.float64)), x)  # sigma = 0: identity
    assert ADMDenoiser(GaussianEps(mu, s0), clip=True)(x, sig).abs().max() <= 1.0
    with pytest.raises(ValueError, match="not a trained level"):
        d(x, sig * 1.01)


@pytest.mark.parametrize("clip", [False, True])
def test_ddpm_through_wrapper_equals_vp_ddim_eta1_step_for_step(clip):
    net = GaussianEps(0.7, 0.6)  # clipping is active on part of the pixels
    sch = RespacedVPSchedule()
    d = ADMDenoiser(net, sch, clip=clip)
    K, shape = 10, (2, 3, 4, 4)
    ts = sch.timesteps(K)

    # VP DDIM(eta = 1) as guided-diffusion's ddim_sample, written directly
    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    vp_states = []
    for i, t in enumerate(ts):
        a, a_prev = ABAR[t], (ABAR[ts[i + 1]] if i + 1 < K else 1.0)
        tt = torch.full((shape[0],), t)
        eps = net(x, tt)[:, :3]
        x0 = (x - math.sqrt(1 - a) * eps) / math.sqrt(a)
        if clip:
            x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(a) * x0) / math.sqrt(1 - a)  # eps re-derived from the clipped x0
        c = math.sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
        noise = torch.randn(shape, generator=g, dtype=torch.float64)
        x = x0 * math.sqrt(a_prev) + math.sqrt(max(1 - a_prev - c**2, 0.0)) * eps + (c * noise if i + 1 < K else 0)
        vp_states.append((x.clone(), a_prev))

    # the suite's DDPM step through the wrapper, in VE coordinates
    g = torch.Generator().manual_seed(3)
    y = sch.initial_noise(shape, g, dtype=torch.float64)
    step = DIFFUSION_SAMPLERS.entry("ddpm").obj(DIFFUSION_SAMPLERS.entry("ddpm").options())
    grid = sch.discretize(K).tolist()

    def lvl(z, s):
        return d(z, torch.full((shape[0],), s, dtype=z.dtype))

    for i in range(K):
        y = step.predict(lvl, y, grid[i], grid[i + 1], g)
        x_vp, a_prev = vp_states[i]
        torch.testing.assert_close(y * math.sqrt(a_prev), x_vp, rtol=1e-9, atol=1e-9)

    g = torch.Generator().manual_seed(3)
    out = sample(d, sch.initial_noise(shape, g, dtype=torch.float64), sch, K, "ddim", eta=1.0,
                 final_denoise=False, generator=g)
    torch.testing.assert_close(out, vp_states[-1][0], rtol=1e-9, atol=1e-9)

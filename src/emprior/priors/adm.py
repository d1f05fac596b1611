"""A pretrained VP noise predictor (guided-diffusion's ADM, DPS's ``ffhq_10m.pt``) as the suite's VE
denoiser d(x_t, sigma) = E[x | x_t], sampled exactly on its trained timesteps (diem-arxiv Table 4).

The VP process of the checkpoint (DDPM, Ho et al. 2020; guided-diffusion linear schedule) is::

    beta_t = linspace(1e-4, 0.02, 1000)[t],  abar_t = prod_{s <= t} (1 - beta_s),
    x^vp_t = sqrt(abar_t) x + sqrt(1 - abar_t) z.

Dividing by sqrt(abar_t) gives the suite's VE process x_t = x + sigma z (diem-neurips Eq. (1)-(2))
with::

    x^ve = x^vp / sqrt(abar_t),   sigma_t = sqrt((1 - abar_t) / abar_t),

and Tweedie's formula (Eq. (5)) in either parametrisation gives the denoiser from the predicted noise
eps_hat = net(x^vp, t)[:, :3] (the last 3 channels are the learned variance, unused)::

    x_hat = (x^vp - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t) = x^ve - sigma_t eps_hat,

optionally clamped to [-1, 1] (guided-diffusion's ``clip_denoised``, on in DPS's
configs/diffusion_config.yaml). The network is only ever asked at a trained timestep: a sigma that is
not one of the 1000 trained levels raises (no interpolation).

:class:`RespacedVPSchedule` is the sampling grid: the timesteps guided-diffusion's ``space_timesteps``
keeps for K steps (reference: DPS2022/diffusion-posterior-sampling@effbde7 guided_diffusion/
gaussian_diffusion.py:240-293; SpacedDiffusion keeps abar at the kept steps and calls the model with
the original timestep, :296-370), in decreasing order, then sigma = 0. With it, ``sample(...,
final_denoise=False)`` makes K network evaluations and its last move (to sigma = 0) returns the last
x_hat, as the reference's last step (abar_prev = 1) returns pred_xstart. The suite's DDPM/DDIM(eta=1)
update is then exactly guided-diffusion's ``ddim_sample`` with eta = 1 (proved step for step in
tests/unit/priors/test_adm_prior.py). The reference starts from x^vp_T ~ N(0, I), i.e.
x^ve_T ~ N(0, (sigma_max^2 + 1) I): :meth:`RespacedVPSchedule.initial_noise`.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from emprior.core.errors import ConfigError
from emprior.diffusion.schedule import Schedule

__all__ = ["ADMDenoiser", "RespacedVPSchedule", "linear_alphas_cumprod", "space_timesteps"]

T_TRAIN = 1000


def linear_alphas_cumprod(steps: int = T_TRAIN, beta_start: float = 1e-4, beta_end: float = 0.02) -> np.ndarray:
    """abar_t for guided-diffusion's "linear" schedule (betas scaled by 1000/steps), float64."""
    scale = 1000 / steps
    betas = np.linspace(scale * beta_start, scale * beta_end, steps, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def space_timesteps(num_timesteps: int, count: int) -> list[int]:
    """The ``count`` timesteps guided-diffusion keeps out of ``num_timesteps`` (one section, a fractional
    stride (num_timesteps - 1)/(count - 1) accumulated in floating point and rounded half-to-even, as the
    reference does), sorted increasingly."""
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= num_timesteps:
        raise ConfigError(f"steps: must be an integer in [1, {num_timesteps}], got {count!r}")
    stride = 1 if count <= 1 else (num_timesteps - 1) / (count - 1)
    cur, taken = 0.0, []
    for _ in range(count):
        taken.append(round(cur))
        cur += stride
    return sorted(set(taken))


class RespacedVPSchedule(Schedule):
    """The VE image of the VP linear schedule, discretised on guided-diffusion's respaced timesteps."""

    def __init__(self, alphas_cumprod: np.ndarray | None = None):
        abar = linear_alphas_cumprod() if alphas_cumprod is None else np.asarray(alphas_cumprod, dtype=np.float64)
        self.alphas_cumprod = abar
        self.sigmas = np.sqrt((1.0 - abar) / abar)  # increasing in t
        super().__init__(float(self.sigmas[0]), float(self.sigmas[-1]))

    def __repr__(self) -> str:
        return f"RespacedVPSchedule(T={len(self.sigmas)}, sigma in [{self.sigma_min:.4g}, {self.sigma_max:.4g}])"

    def timesteps(self, steps: int) -> list[int]:
        """The kept timesteps in sampling (decreasing) order."""
        return space_timesteps(len(self.sigmas), steps)[::-1]

    def discretize(self, steps: int) -> Tensor:
        """sigma at the ``steps`` kept timesteps, decreasing, then 0: ``steps + 1`` float64 values."""
        return torch.tensor([*self.sigmas[self.timesteps(steps)], 0.0], dtype=torch.float64)

    def initial_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                      device: torch.device | str | None = None, dtype: torch.dtype = torch.float32) -> Tensor:
        """x^ve_T = z / sqrt(abar_T), z ~ N(0, I): the reference's x^vp_T ~ N(0, I) in VE coordinates."""
        z = torch.randn(shape, generator=generator, device=device, dtype=dtype)
        return z / float(np.sqrt(self.alphas_cumprod[-1]))

    def timestep_of(self, sigma: Tensor, rtol: float = 1e-5) -> Tensor:
        """The trained timestep of each sigma (B,); a sigma off the trained grid raises ValueError."""
        table = torch.as_tensor(self.sigmas, dtype=torch.float64, device=sigma.device)
        s = sigma.detach().to(torch.float64).reshape(-1)
        t = torch.searchsorted(table, s).clamp(1, len(table) - 1)
        t = torch.where((s - table[t - 1]).abs() < (table[t] - s).abs(), t - 1, t)
        err = ((table[t] - s).abs() / table[t]).max() if s.numel() else 0.0
        if float(err) > rtol:
            raise ValueError(f"sigma {s.tolist()} is not a trained level of the VP schedule (relative error "
                             f"{float(err):.2g}); the ADM prior is only evaluated on its trained timesteps")
        return t


class ADMDenoiser(nn.Module):
    """d(x^ve, sigma) = clamp(x^ve - sigma eps_hat(x^ve / sqrt(1 + sigma^2), t(sigma))) for a VP network
    ``net(x_vp, t)`` whose first ``channels`` output channels predict the noise. sigma = 0 returns x."""

    def __init__(self, net: nn.Module, schedule: RespacedVPSchedule | None = None, *, clip: bool = True,
                 channels: int = 3):
        super().__init__()
        self.net = net
        self.schedule = schedule or RespacedVPSchedule()
        self.clip = clip
        self.channels = channels

    def forward(self, x: Tensor, sigma: Tensor) -> Tensor:
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        zero = sigma == 0
        if bool(zero.all()):
            return x  # E[x | x_0] = x_0
        t = self.schedule.timestep_of(torch.where(zero, torch.full_like(sigma, self.schedule.sigma_min), sigma))
        s64 = torch.as_tensor(self.schedule.sigmas, dtype=torch.float64, device=x.device)[t]
        s = s64.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))
        c_in = (1.0 / torch.sqrt(1.0 + s64**2)).to(x.dtype).view_as(s)  # sqrt(abar_t)
        eps = self.net(x * c_in, t)[:, : self.channels]
        x_hat = x - s * eps
        if self.clip:
            x_hat = x_hat.clamp(-1.0, 1.0)
        return torch.where(zero.view_as(s), x, x_hat)

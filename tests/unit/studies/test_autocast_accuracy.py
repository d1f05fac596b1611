"""bf16 autocast of the denoiser leaves MMPS(1) posterior samples within Monte-Carlo error of float32
ones on an analytic Gaussian prior (emprior.studies.autocast_accuracy; the benchmark numbers are in
docs/precision.md)."""

import torch

from emprior.diffusion.preconditioning import PreconditionedDenoiser
from emprior.priors.gaussian import GaussianDenoiser, LowRankGaussian
from emprior.studies.autocast_accuracy import GaussianNet, measure


def test_gaussian_net_makes_the_preconditioned_denoiser_exact():
    g = torch.Generator().manual_seed(0)
    b = torch.randn(6, 6, generator=g, dtype=torch.float64)
    cov, mu = b @ b.T / 6 + 0.1 * torch.eye(6, dtype=torch.float64), torch.randn(6, generator=g, dtype=torch.float64)
    x = 3 * torch.randn(5, 6, generator=g)
    exact = GaussianDenoiser(LowRankGaussian.full(mu, cov).to(dtype=torch.float32))
    for s in (1e-3, 0.1, 1.0, 10.0):
        sigma = torch.full((5,), s)
        assert torch.allclose(PreconditionedDenoiser(GaussianNet(mu, cov))(x, sigma), exact(x, sigma), atol=1e-5)


def test_bf16_mmps1_samples_stay_within_monte_carlo_error():
    # measured at these settings: max |z| 0.12 (means), 0.02 (variances); the same-noise difference of the
    # two precisions, in standard errors of the float32 estimates. Tolerance: half a standard error.
    res = measure(d=8, m=4, n=512, steps=32)
    assert not res["identical"]  # autocast did change the computation
    z = res["bf16_vs_fp32"]
    assert z["max_abs_z_mean"] < 0.5 and z["max_abs_z_var"] < 0.5, z
    # MMPS(1)'s own bias vs the exact posterior is not what bf16 changes: it stays within 0.5 SE of float32's
    for key in ("rms_z_mean", "rms_z_var"):
        assert abs(res["bf16_vs_exact"][key] - res["fp32_vs_exact"][key]) < 0.5


def test_the_tolerance_tells_bf16_in_the_skip_path_apart():
    # the whole closed-form denoiser under autocast (x_t itself rounded to bf16): measured max |z| 0.82 / 0.97
    z = measure(d=8, m=4, n=512, steps=32, form="denoiser")["bf16_vs_fp32"]
    assert max(z["max_abs_z_mean"], z["max_abs_z_var"]) > 0.5, z

"""Gaussian-mixture priors sum_k w_k N(mu_k, C_k) with exact denoisers (exact tests and benchmarks).

The posterior of the VE perturbation x_t = x + sigma z is p(x | x_t) = sum_k r_k(x_t) N(m_k, V_k) with
responsibilities r_k ∝ w_k N(x_t | mu_k, C_k + sigma^2 I) (softmax of log-weights, i.e.
logsumexp-normalised), and m_k, V_k the single-Gaussian moments of :mod:`emprior.priors.gaussian`;
the mixture moments follow from the laws of total expectation and variance. They satisfy Tweedie's
formulae Eqs. (21) and (24) exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from emprior.diffusion.schedule import batch_sigma
from emprior.priors.gaussian import LOG_2PI, check_linear_gaussian, condition_linear_gaussian, flat_events

__all__ = ["GaussianMixture", "GaussianMixtureDenoiser"]


class GaussianMixture:
    """sum_k w_k N(mu_k, C_k) in R^d.

    ``weights`` (K,) >= 0 (normalised here), ``means`` (K, d), ``covs`` either full (K, d, d), or
    isotropic standard deviations (K,) (C_k = std_k^2 I) or one shared std (float / 0-d tensor).
    Each C_k = Q_k diag(lam_k) Q_k^T is decomposed once (Q_k = I for isotropic components), so
    (C_k + sigma^2 I)^-1 costs O(d^2) for any sigma.
    """

    def __init__(self, weights: Tensor, means: Tensor, covs: Tensor | float):
        means = torch.as_tensor(means)
        if not means.is_floating_point():
            means = means.to(torch.get_default_dtype())
        if means.dim() != 2 or means.shape[0] == 0:
            raise ValueError(f"means: expected shape (K, d) with K > 0, got {tuple(means.shape)}")
        K, d = means.shape
        kw = {"dtype": means.dtype, "device": means.device}
        weights = torch.as_tensor(weights, **kw).reshape(-1)
        if weights.shape != (K,) or not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()):
            raise ValueError(f"weights: expected ({K},) finite values >= 0, got shape {tuple(weights.shape)}")
        if not weights.sum() > 0:
            raise ValueError("weights: must not all be zero")
        covs = torch.as_tensor(covs, **kw)
        if covs.dim() == 0:
            covs = covs.expand(K)
        if covs.shape == (K,):
            if not bool(torch.isfinite(covs).all()) or bool((covs < 0).any()):
                raise ValueError("covs: isotropic standard deviations must be finite and >= 0")
            lam = covs.square()[:, None].expand(K, d).clone()
            Q = None
        elif covs.shape == (K, d, d):
            asym = (covs - covs.transpose(1, 2)).abs().amax().item()
            if not asym <= 1e-6 * max(covs.abs().amax().item(), 1e-300):
                raise ValueError(f"covs: must be symmetric, max asymmetry {asym:.3g}")
            lam, Q = torch.linalg.eigh((covs + covs.transpose(1, 2)) / 2)
            if bool((lam < -1e-6 * lam.abs().amax(dim=1, keepdim=True)).any()):
                raise ValueError(
                    f"covs: must be positive semi-definite, smallest eigenvalue {lam.min().item():.3g}"
                )
            lam = lam.clamp(min=0)
        else:
            raise ValueError(
                f"covs: expected shape ({K}, {d}, {d}), ({K},) or a scalar std, got {tuple(covs.shape)}"
            )
        self._set(torch.log(weights / weights.sum()), means, lam, Q)

    def _set(self, log_w: Tensor, means: Tensor, lam: Tensor, Q: Tensor | None) -> None:
        self.log_weights = log_w
        self.means = means
        self.lam = lam  # (K, d) eigenvalues of C_k
        self.Q = Q  # (K, d, d) eigenvectors (columns) or None for the identity
        self.K, self.d = means.shape

    @classmethod
    def _from_spectrum(cls, log_w: Tensor, means: Tensor, lam: Tensor, Q: Tensor | None) -> GaussianMixture:
        obj = cls.__new__(cls)
        obj._set(log_w, means, lam, Q)
        return obj

    @property
    def weights(self) -> Tensor:
        return self.log_weights.exp()

    @property
    def covs(self) -> Tensor:
        """Dense covariances (K, d, d)."""
        if self.Q is None:
            return torch.diag_embed(self.lam)
        return (self.Q * self.lam[:, None, :]) @ self.Q.transpose(1, 2)

    def _params(self, like: Tensor):
        kw = {"dtype": like.dtype, "device": like.device}
        Q = None if self.Q is None else self.Q.to(**kw)
        return self.log_weights.to(**kw), self.means.to(**kw), self.lam.to(**kw), Q

    @staticmethod
    def _to_basis(Q: Tensor | None, v: Tensor) -> Tensor:
        """Q_k^T v_k for v (B, K, d)."""
        return v if Q is None else torch.einsum("kij,bki->bkj", Q, v)

    @staticmethod
    def _from_basis(Q: Tensor | None, z: Tensor) -> Tensor:
        """Q_k z_k for z (B, K, d)."""
        return z if Q is None else torch.einsum("kij,bkj->bki", Q, z)

    def _component_loglik(self, xf: Tensor, s2: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """log N(x | mu_k, C_k + s2 I) (B, K), coordinates z = Q^T (x - mu) and eigenvalues lam + s2."""
        _, means, lam, Q = self._params(xf)
        z = self._to_basis(Q, xf[:, None, :] - means[None])
        if Q is None:  # isotropic: one eigenvalue per component, keep den (B, K, 1) to save memory
            lam = lam[:, :1]
        den = lam[None] + s2[:, None, None]
        if bool((den <= 0).any()):
            raise ValueError("sigma: a component covariance is singular and sigma = 0 (density undefined)")
        logdet = den.log().sum(-1) * (self.d if Q is None else 1)
        ll = -0.5 * ((z.square() / den).sum(-1) + logdet + self.d * LOG_2PI)
        return ll, z, den

    # -- public API ------------------------------------------------------------------------------
    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n i.i.d. samples (n, d): k ~ Categorical(w), x = mu_k + Q_k (sqrt(lam_k) * z)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be a positive integer, got {n!r}")
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.d, generator=generator, dtype=self.means.dtype, device=self.means.device)
        z = z * self.lam[k].sqrt()
        if self.Q is not None:
            z = torch.einsum("nij,nj->ni", self.Q[k], z)
        return self.means[k] + z

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) = logsumexp_k (log w_k + log N(x | mu_k, C_k)) for x (B, d); differentiable."""
        xf = flat_events(x, self.d, "x")
        ll, _, _ = self._component_loglik(xf, torch.zeros(xf.shape[0], dtype=xf.dtype, device=xf.device))
        log_w, _, _, _ = self._params(xf)
        return torch.logsumexp(log_w + ll, dim=1)

    def noised(self, sigma: float) -> GaussianMixture:
        """The law of x_t = x + sigma z: sum_k w_k N(mu_k, C_k + sigma^2 I) (same eigenvectors)."""
        sigma = float(sigma)
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma: must be finite and >= 0, got {sigma!r}")
        return GaussianMixture._from_spectrum(self.log_weights, self.means, self.lam + sigma**2, self.Q)

    def moments(self) -> tuple[Tensor, Tensor]:
        """Mixture mean sum_k w_k mu_k and covariance sum_k w_k (C_k + (mu_k - m)(mu_k - m)^T)."""
        w = self.weights
        m = w @ self.means
        dm = self.means - m
        cov = (w[:, None, None] * (self.covs + dm[:, :, None] * dm[:, None, :])).sum(0)
        return m, cov

    def posterior(self, A: Tensor, y: Tensor, noise_std: float) -> GaussianMixture:
        """Exact p(x | y) for y = A x + noise_std e: a mixture with components N(m_k', C_k') given by
        :func:`gaussian_posterior` and weights w_k' ∝ w_k N(y | A mu_k, A C_k A^T + noise_std^2 I)."""
        kw = {"dtype": self.means.dtype, "device": self.means.device}
        A = torch.as_tensor(A, **kw)
        y = torch.as_tensor(y, **kw)
        var = check_linear_gaussian(A, y, noise_std, self.d)
        pm, pc, log_lik = condition_linear_gaussian(self.means, self.covs, A, y, var)
        log_w = self.log_weights + log_lik
        log_w = log_w - torch.logsumexp(log_w, 0)
        return GaussianMixture(log_w.exp(), pm, pc)

    def __repr__(self) -> str:
        return f"GaussianMixture(K={self.K}, d={self.d}, isotropic={self.Q is None})"


class GaussianMixtureDenoiser:
    """Exact moments of p(x | x_t) for a :class:`GaussianMixture` prior (module docstring)::

        r_k = softmax_k(log w_k + log N(x_t | mu_k, C_k + sigma^2 I))
        m_k = mu_k + C_k (C_k + sigma^2 I)^-1 (x_t - mu_k),   V_k = (C_k^-1 + sigma^-2 I)^-1
        E[x | x_t] = sum_k r_k m_k
        V[x | x_t] = sum_k r_k (V_k + (m_k - E)(m_k - E)^T)      (law of total variance)

    These satisfy Eq. (24) (E = x_t + sigma^2 grad log p_sigma(x_t)) and Eq. (21)
    (V = sigma^2 dE/dx_t) exactly. ``x_t`` may be (B, d) or (B, *shape) with prod(shape) = d.
    """

    def __init__(self, mixture: GaussianMixture):
        if not isinstance(mixture, GaussianMixture):
            raise TypeError(f"mixture: expected a GaussianMixture, got {type(mixture).__name__}")
        self.mixture = mixture

    def _moments(
        self, x_t: Tensor, sigma: Tensor | float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor | None, Tensor]:
        """(r (B, K), m (B, K, d), post_var (eigenvalues of V_k: (B, K, d), or (B, K, 1) if isotropic),
        Q, E (B, d))."""
        mix = self.mixture
        xf = flat_events(x_t, mix.d, "x_t")
        s2 = batch_sigma(sigma, xf) ** 2
        log_w, means, lam, Q = mix._params(xf)
        ll, z, den = mix._component_loglik(xf, s2)
        r = torch.softmax(log_w + ll, dim=1)
        lam = lam[:, :1] if Q is None else lam
        gain = lam[None] / den  # den > 0 was checked
        m = means[None] + mix._from_basis(Q, gain * z)
        post_var = lam[None] * s2[:, None, None] / den
        E = (r[:, :, None] * m).sum(1)
        return r, m, post_var, Q, E

    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        """E[x | x_t] (differentiable in x_t)."""
        _, _, _, _, E = self._moments(x_t, sigma)
        return E.reshape(x_t.shape)

    def covariance(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        """V[x | x_t] as dense (B, d, d) matrices."""
        r, m, pv, Q, E = self._moments(x_t, sigma)
        if Q is None:
            Vk = torch.diag_embed(pv.expand(-1, -1, self.mixture.d))
        else:
            Vk = torch.einsum("kij,bkj,klj->bkil", Q, pv, Q)
        dm = m - E[:, None, :]
        V = (r[:, :, None, None] * (Vk + dm[..., :, None] * dm[..., None, :])).sum(1)
        return (V + V.transpose(1, 2)) / 2

    def cov_matvec(self, x_t: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
        """V[x | x_t] v without forming V: sum_k r_k (V_k v + (m_k - E)((m_k - E)^T v))."""
        if v.shape != x_t.shape:
            raise ValueError(f"v: expected shape {tuple(x_t.shape)} (as x_t), got {tuple(v.shape)}")
        r, m, pv, Q, E = self._moments(x_t, sigma)
        vf = v.reshape(v.shape[0], -1)
        vk = vf[:, None, :].expand(-1, self.mixture.K, -1)
        Vv = self.mixture._from_basis(Q, pv * self.mixture._to_basis(Q, vk))
        dm = m - E[:, None, :]
        out = Vv + dm * (dm * vf[:, None, :]).sum(-1, keepdim=True)
        return (r[:, :, None] * out).sum(1).reshape(v.shape)

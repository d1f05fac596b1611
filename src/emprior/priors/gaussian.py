"""Gaussian and Gaussian-mixture priors with exact denoisers (exact tests, initial priors, benchmarks).

For a prior p(x) and the VE perturbation x_t = x + sigma z, Tweedie's formulae (Eqs. (24)-(25),
Theorem 1) give E[x | x_t] = x_t + sigma^2 grad log p(x_t) and V[x | x_t] = sigma^2 dE[x | x_t]/dx_t
(Eq. (21)). For Gaussian priors and Gaussian mixtures both moments are closed-form:

- N(mu, Sigma) with Sigma = Q diag(lam) Q^T::

      E[x | x_t] = mu + Sigma (Sigma + sigma^2 I)^-1 (x_t - mu)
                 = mu + Q diag(lam/(lam+sigma^2)) Q^T (x_t - mu)
      V[x | x_t] = (Sigma^-1 + sigma^-2 I)^-1 = Q diag(lam sigma^2/(lam+sigma^2)) Q^T

  (constant in x_t). Eigendecompositions are computed once, so any sigma costs two products.
- sum_k w_k N(mu_k, C_k): p(x | x_t) = sum_k r_k(x_t) N(m_k, V_k) with responsibilities
  r_k ∝ w_k N(x_t | mu_k, C_k + sigma^2 I) (softmax of log-weights, i.e. logsumexp-normalised), and
  m_k, V_k the single-Gaussian moments above; the mixture moments follow from the laws of total
  expectation and variance.

All batched functions take (B, *event_shape) tensors and a noise level ``sigma`` that is a float, a
0-d tensor or a (B,) tensor. Parameters are cast to the input's dtype/device on the fly, so a float32
checkpoint can be evaluated in float64.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from emprior.diffusion.schedule import batch_sigma
from emprior.core.errors import ArtifactError

__all__ = [
    "GaussianDenoiser",
    "GaussianMixture",
    "GaussianMixtureDenoiser",
    "LowRankGaussian",
    "gaussian_posterior",
]

_LOG_2PI = math.log(2 * math.pi)


def _shrink(lam: Tensor, s2: Tensor) -> Tensor:
    """lam / (lam + s2) (the Wiener gain), with 0/0 (lam = s2 = 0) read as 1 (x_t = x exactly)."""
    den = lam + s2
    ok = den > 0
    return torch.where(ok, lam / torch.where(ok, den, torch.ones_like(den)), torch.ones_like(den))


def _harmonic(lam: Tensor, s2: Tensor) -> Tensor:
    """(1/lam + 1/s2)^-1 = lam s2 / (lam + s2), continuous at lam = 0 or s2 = 0 (value 0)."""
    den = lam + s2
    ok = den > 0
    return torch.where(ok, lam * s2 / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))


def _flat(x: Tensor, d: int, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2 or math.prod(x.shape[1:]) != d:
        raise ValueError(
            f"{name}: expected shape (B, *event_shape) with {d} elements per sample, got {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], d)


class LowRankGaussian:
    """N(mean, Sigma) with Sigma = U diag(s) U^T + tau I (probabilistic PCA form).

    ``U`` (d, r) has orthonormal columns, ``s`` (r,) >= 0, ``tau`` >= 0; ``event_shape`` is the shape
    of one sample (d = prod(event_shape)). The eigenvalues of Sigma are s + tau along U and tau on
    the orthogonal complement, which every method below exploits: a spectral function f(Sigma) v is
    f(tau) v + U ((f(s + tau) - f(tau)) * U^T v), O(d r) per vector.
    """

    def __init__(
        self,
        mean: Tensor,
        U: Tensor,
        s: Tensor,
        tau: float = 0.0,
        event_shape: Sequence[int] | None = None,
    ):
        mean = torch.as_tensor(mean)
        if not mean.is_floating_point():
            mean = mean.to(torch.get_default_dtype())
        if event_shape is None:
            event_shape = tuple(mean.shape)
        event_shape = tuple(int(k) for k in event_shape)
        d = math.prod(event_shape)
        if mean.numel() != d or d == 0:
            raise ValueError(f"mean: has {mean.numel()} elements but event_shape {event_shape} needs {d}")
        U = torch.as_tensor(U, dtype=mean.dtype, device=mean.device)
        s = torch.as_tensor(s, dtype=mean.dtype, device=mean.device).reshape(-1)
        if U.dim() != 2 or U.shape[0] != d:
            raise ValueError(f"U: expected shape ({d}, r), got {tuple(U.shape)}")
        if s.shape != (U.shape[1],):
            raise ValueError(f"s: expected shape ({U.shape[1]},) to match U, got {tuple(s.shape)}")
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            raise ValueError(f"s: must be finite and >= 0, got min {s.min().item() if s.numel() else 0!r}")
        tau = float(tau)
        if not (math.isfinite(tau) and tau >= 0):
            raise ValueError(f"tau: must be finite and >= 0, got {tau!r}")
        if U.shape[1] > 0:
            gram_err = (U.T @ U - torch.eye(U.shape[1], dtype=U.dtype, device=U.device)).abs().max().item()
            if not gram_err <= 1e3 * torch.finfo(U.dtype).eps * max(d, 1):
                raise ValueError(f"U: columns must be orthonormal, max |U^T U - I| = {gram_err:.3g}")
        self.mean = mean.reshape(d)
        self.U = U
        self.s = s
        self.tau = tau
        self.event_shape = event_shape
        self.d = d

    # -- construction / persistence -------------------------------------------------------------
    @classmethod
    def full(cls, mean: Tensor, cov: Tensor, event_shape: Sequence[int] | None = None) -> LowRankGaussian:
        """From a dense covariance by eigendecomposition: U = eigenvectors, s = eigenvalues, tau = 0."""
        mean = torch.as_tensor(mean)
        cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
        d = mean.numel()
        if cov.shape != (d, d):
            raise ValueError(f"cov: expected shape ({d}, {d}), got {tuple(cov.shape)}")
        scale = cov.abs().max().clamp(min=torch.finfo(cov.dtype).tiny)
        asym = ((cov - cov.T).abs().max() / scale).item()
        if not asym <= 1e-6:
            raise ValueError(f"cov: must be symmetric, relative asymmetry {asym:.3g}")
        lam, Q = torch.linalg.eigh((cov + cov.T) / 2)
        if lam.min() < -1e-6 * lam.abs().max():
            raise ValueError(
                f"cov: must be positive semi-definite, smallest eigenvalue {lam.min().item():.3g}"
            )
        return cls(mean, Q, lam.clamp(min=0), 0.0, event_shape)

    def state_dict(self) -> dict[str, Tensor]:
        return {
            "mean": self.mean.clone(),
            "U": self.U.clone(),
            "s": self.s.clone(),
            "tau": torch.tensor(self.tau, dtype=torch.float64),
            "event_shape": torch.tensor(self.event_shape, dtype=torch.int64),
        }

    @classmethod
    def from_state_dict(cls, sd: dict[str, Tensor]) -> LowRankGaussian:
        for key in ("mean", "U", "s", "tau", "event_shape"):
            if key not in sd:
                raise ArtifactError(f"LowRankGaussian state dict: missing key {key!r}")
        shape = tuple(int(k) for k in torch.as_tensor(sd["event_shape"]).reshape(-1).tolist())
        return cls(sd["mean"], sd["U"], sd["s"], float(sd["tau"]), shape)

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> LowRankGaussian:
        kw = {"dtype": dtype or self.mean.dtype, "device": device or self.mean.device}
        return LowRankGaussian(
            self.mean.to(**kw), self.U.to(**kw), self.s.to(**kw), self.tau, self.event_shape
        )

    # -- spectral helpers ---------------------------------------------------------------------
    def _params(self, like: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        kw = {"dtype": like.dtype, "device": like.device}
        return self.mean.to(**kw), self.U.to(**kw), self.s.to(**kw)

    def _spectral(self, v: Tensor, f_par: Tensor, f_perp: Tensor) -> Tensor:
        """f(Sigma) v for flat v (B, d), with f_par (B, r) = f(s + tau) and f_perp (B,) = f(tau)."""
        _, U, _ = self._params(v)
        coef = v @ U  # (B, r)
        return f_perp[:, None] * v + ((f_par - f_perp[:, None]) * coef) @ U.T

    def _lams(self, like: Tensor) -> tuple[Tensor, Tensor]:
        _, _, s = self._params(like)
        return s + self.tau, torch.tensor(self.tau, dtype=like.dtype, device=like.device)

    # -- public operations --------------------------------------------------------------------
    def cov_matvec(self, v: Tensor) -> Tensor:
        """Sigma v = U (s * U^T v) + tau v for v (B, *event_shape)."""
        vf = _flat(v, self.d, "v")
        B = vf.shape[0]
        lam_par, lam_perp = self._lams(vf)
        out = self._spectral(vf, lam_par.expand(B, -1), lam_perp.expand(B))
        return out.reshape(v.shape)

    def cov_inv_plus_matvec(self, v: Tensor, sigma: Tensor | float) -> Tensor:
        """(Sigma^-1 + sigma^-2 I)^-1 v, eigenvalue-wise lam sigma^2 / (lam + sigma^2), per-sample sigma.

        This is the heuristic covariance (Sigma_x^-1 + Sigma_t^-1)^-1 of Algorithm 3 (line 6) and the
        exact V[x | x_t] of a Gaussian prior. Well defined for singular Sigma (tau = 0): the limit is 0
        on the null space.
        """
        vf = _flat(v, self.d, "v")
        s2 = batch_sigma(sigma, vf) ** 2
        lam_par, lam_perp = self._lams(vf)
        f_par = _harmonic(lam_par[None, :], s2[:, None])
        f_perp = _harmonic(lam_perp, s2)
        return self._spectral(vf, f_par, f_perp).reshape(v.shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n i.i.d. samples mean + U (sqrt(s) z_1) + sqrt(tau) z_2, shape (n, *event_shape)."""
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n: must be a positive integer, got {n!r}")
        kw = {"dtype": self.mean.dtype, "device": self.mean.device}
        z1 = torch.randn(n, self.U.shape[1], generator=generator, **kw)
        z2 = torch.randn(n, self.d, generator=generator, **kw)
        x = self.mean + (z1 * self.s.sqrt()) @ self.U.T + math.sqrt(self.tau) * z2
        return x.reshape(n, *self.event_shape)

    def dense_cov(self) -> Tensor:
        """Sigma as a dense (d, d) matrix."""
        eye = torch.eye(self.d, dtype=self.mean.dtype, device=self.mean.device)
        return (self.U * self.s) @ self.U.T + self.tau * eye

    def __repr__(self) -> str:
        return (
            f"LowRankGaussian(d={self.d}, rank={self.U.shape[1]}, tau={self.tau:.3g}, "
            f"event_shape={self.event_shape})"
        )


class GaussianDenoiser:
    """Exact denoiser of a Gaussian prior N(mean, Sigma) (module docstring)::

        E[x | x_t] = mean + Sigma (Sigma + sigma^2 I)^-1 (x_t - mean)

    evaluated in the eigenbasis of Sigma (O(d r) per sample). Built from torch ops only, so it is
    differentiable in x_t and vector-Jacobian products work (Jacobian = Sigma (Sigma + sigma^2 I)^-1,
    symmetric, and sigma^2 times it is V[x | x_t], Eq. (21)).
    """

    def __init__(self, prior: LowRankGaussian):
        if not isinstance(prior, LowRankGaussian):
            raise TypeError(f"prior: expected a LowRankGaussian, got {type(prior).__name__}")
        self.prior = prior

    def __call__(self, x_t: Tensor, sigma: Tensor | float) -> Tensor:
        p = self.prior
        xf = _flat(x_t, p.d, "x_t")
        s2 = batch_sigma(sigma, xf) ** 2
        mean, _, _ = p._params(xf)
        lam_par, lam_perp = p._lams(xf)
        f_par = _shrink(lam_par[None, :], s2[:, None])
        f_perp = _shrink(lam_perp, s2)
        return (mean + p._spectral(xf - mean, f_par, f_perp)).reshape(x_t.shape)

    def cov_matvec(self, x_t: Tensor, sigma: Tensor | float, v: Tensor) -> Tensor:
        """Exact V[x | x_t] v = (Sigma^-1 + sigma^-2 I)^-1 v (independent of x_t for a Gaussian)."""
        if v.shape != x_t.shape:
            raise ValueError(f"v: expected shape {tuple(x_t.shape)} (as x_t), got {tuple(v.shape)}")
        return self.prior.cov_inv_plus_matvec(v, batch_sigma(sigma, x_t))


def _condition(
    mean: Tensor, cov: Tensor, A: Tensor, y: Tensor, noise_var: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Batched (leading dims of mean/cov) Gaussian conditioning on y = A x + noise.

    Returns posterior mean, posterior covariance and log N(y | A mean, A cov A^T + noise_var I).
    """
    m = A.shape[0]
    Ac = A @ cov  # (..., m, d)
    S = Ac @ A.T + noise_var * torch.eye(m, dtype=cov.dtype, device=cov.device)
    S = (S + S.transpose(-1, -2)) / 2
    L, info = torch.linalg.cholesky_ex(S)
    if bool((info != 0).any()):
        raise ValueError(
            "A cov A^T + noise_std^2 I: not positive definite (noise_std = 0 with rank-deficient A cov A^T?)"
        )
    r = y - mean @ A.T  # (..., m)
    K_T = torch.cholesky_solve(Ac, L)  # S^-1 A cov, (..., m, d)
    post_mean = mean + (r.unsqueeze(-2) @ K_T).squeeze(-2)
    post_cov = cov - Ac.transpose(-1, -2) @ K_T
    post_cov = (post_cov + post_cov.transpose(-1, -2)) / 2
    w = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False).squeeze(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    log_lik = -0.5 * (w.square().sum(-1) + logdet + m * _LOG_2PI)
    return post_mean, post_cov, log_lik


def _check_linear_gaussian(A: Tensor, y: Tensor, noise_std: float, d: int) -> float:
    if A.dim() != 2 or A.shape[1] != d:
        raise ValueError(f"A: expected shape (m, {d}), got {tuple(A.shape)}")
    if y.shape != (A.shape[0],):
        raise ValueError(f"y: expected shape ({A.shape[0]},) to match A, got {tuple(y.shape)}")
    noise_std = float(noise_std)
    if not (math.isfinite(noise_std) and noise_std >= 0):
        raise ValueError(f"noise_std: must be finite and >= 0, got {noise_std!r}")
    return noise_std**2


def gaussian_posterior(
    mean: Tensor, cov: Tensor, A: Tensor, y: Tensor, noise_std: float
) -> tuple[Tensor, Tensor]:
    """Closed-form x | y for x ~ N(mean, cov), y = A x + noise_std * e, e ~ N(0, I)::

        S = A cov A^T + noise_std^2 I,   K = cov A^T S^-1
        E[x | y] = mean + K (y - A mean),   V[x | y] = cov - K A cov.

    Shapes: mean (d,), cov (d, d), A (m, d), y (m,). Returns (mean (d,), cov (d, d)).
    """
    mean = torch.as_tensor(mean)
    d = mean.numel()
    cov = torch.as_tensor(cov, dtype=mean.dtype, device=mean.device)
    if cov.shape != (d, d):
        raise ValueError(f"cov: expected shape ({d}, {d}), got {tuple(cov.shape)}")
    A = torch.as_tensor(A, dtype=mean.dtype, device=mean.device)
    y = torch.as_tensor(y, dtype=mean.dtype, device=mean.device)
    var = _check_linear_gaussian(A, y, noise_std, d)
    pm, pc, _ = _condition(mean.reshape(d), cov, A, y, var)
    return pm, pc


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
        ll = -0.5 * ((z.square() / den).sum(-1) + logdet + self.d * _LOG_2PI)
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
        xf = _flat(x, self.d, "x")
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
        var = _check_linear_gaussian(A, y, noise_std, self.d)
        pm, pc, log_lik = _condition(self.means, self.covs, A, y, var)
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
        xf = _flat(x_t, mix.d, "x_t")
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

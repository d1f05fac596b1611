"""Gaussian priors N(mu, Sigma) with their exact denoiser, and exact linear-Gaussian conditioning
(exact tests, the initial prior q_0, benchmarks).

For a prior p(x) and the VE perturbation x_t = x + sigma z, Tweedie's formulae (Eqs. (24)-(25),
Theorem 1) give E[x | x_t] = x_t + sigma^2 grad log p(x_t) and V[x | x_t] = sigma^2 dE[x | x_t]/dx_t
(Eq. (21)). For N(mu, Sigma) with Sigma = Q diag(lam) Q^T both are closed-form::

      E[x | x_t] = mu + Sigma (Sigma + sigma^2 I)^-1 (x_t - mu)
                 = mu + Q diag(lam/(lam+sigma^2)) Q^T (x_t - mu)
      V[x | x_t] = (Sigma^-1 + sigma^-2 I)^-1 = Q diag(lam sigma^2/(lam+sigma^2)) Q^T

(constant in x_t). Eigendecompositions are computed once, so any sigma costs two products.
Gaussian mixtures are in :mod:`emprior.priors.mixture`.

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
    "LowRankGaussian",
    "gaussian_loglik",
    "gaussian_posterior",
]

LOG_2PI = math.log(2 * math.pi)


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


def flat_events(x: Tensor, d: int, name: str) -> Tensor:
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
        vf = flat_events(v, self.d, "v")
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
        vf = flat_events(v, self.d, "v")
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
        xf = flat_events(x_t, p.d, "x_t")
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


def gaussian_loglik(L: Tensor, r: Tensor, solved: Tensor | None = None) -> Tensor:
    """log N(r | 0, S) from the lower Cholesky factor L of S = L L^T, batched over leading dims::

        log N = -1/2 (r^T S^-1 r + log det S + m log 2 pi),   log det S = 2 sum_i log L_ii.

    r^T S^-1 r is |L^-1 r|^2 (one triangular solve), or r . solved when the caller already holds
    ``solved`` = S^-1 r (the Gaussian EM E-step reuses it for the posterior mean). The two round
    differently, so each caller keeps the form it always used: results stay bit-identical.
    """
    if solved is None:
        w = torch.linalg.solve_triangular(L, r.unsqueeze(-1), upper=False).squeeze(-1)
        quad = w.square().sum(-1)
    else:
        quad = (r * solved).sum(-1)
    logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
    return -0.5 * (quad + logdet + r.shape[-1] * LOG_2PI)


def condition_linear_gaussian(
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
    return post_mean, post_cov, gaussian_loglik(L, r)


def check_linear_gaussian(A: Tensor, y: Tensor, noise_std: float, d: int) -> float:
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
    var = check_linear_gaussian(A, y, noise_std, d)
    pm, pc, _ = condition_linear_gaussian(mean.reshape(d), cov, A, y, var)
    return pm, pc

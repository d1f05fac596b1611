"""Initial prior q_0 (Sec. 4.1, "Initialization"): a Gaussian N(mu_x, Sigma_x) fitted to the
observations by expectation-maximization.

E-step (exact, linear Gaussian): for each observation (y_i, A_i),
    S_i = A_i Sigma A_i^T + Sigma_y,   K_i = Sigma A_i^T S_i^-1,
    m_i = mu + K_i (y_i - A_i mu),     C_i = Sigma - K_i A_i Sigma.
M-step (closed form): mu' = mean_i m_i, Sigma' = mean_i [C_i + (m_i - mu')(m_i - mu')^T]; with a rank r
the covariance is projected onto the PPCA family U diag(s) U^T + tau I by maximum likelihood (Tipping &
Bishop 1999): U = top-r eigenvectors of Sigma', tau = mean of the discarded eigenvalues, s = lambda - tau.
Each iteration increases the evidence sum_i log N(y_i | A_i mu, S_i) (Eqs. 6-11); it is recorded.

A_i is materialised by applying the operator to the identity basis, so this is for latents of
dimension d <= ``dense_max`` (CIFAR-10: 3072) and is done in float64 because Sigma_y can be 1e-6 I.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from tqdm import tqdm

from emprior.core.errors import ConfigError
from emprior.priors.gaussian import gaussian_loglik


@dataclass
class GaussianEMResult:
    mean: torch.Tensor           # (d,)
    U: torch.Tensor              # (d, r)
    s: torch.Tensor              # (r,)
    tau: float
    log_evidence: list[float] = field(default_factory=list)   # mean log q(y_i) before each M-step


def dense_operator_matrices(op, n: int, x_shape: tuple[int, ...], dtype=torch.float64) -> torch.Tensor:
    """A_i as dense (n, m, d) matrices, by applying the (per-observation) operator to the identity."""
    d = math.prod(x_shape)
    eye = torch.eye(d, dtype=dtype).reshape(d, *x_shape)
    rows = []
    for i in range(n):
        op_i = op[i] if len(op) > 1 else op
        cols = op_i.A(eye)                                  # (d, *y_shape): column j = A e_j
        rows.append(cols.reshape(d, -1).T)                  # (m, d)
    return torch.stack(rows)


def _estep_block(A: torch.Tensor, y: torch.Tensor, mean: torch.Tensor, cov: torch.Tensor, noise_var: float):
    m = A.shape[1]
    S = A @ cov @ A.transpose(1, 2) + noise_var * torch.eye(m, dtype=A.dtype)
    L = torch.linalg.cholesky(S)
    r = y - A @ mean                                                       # (b, m)
    alpha = torch.cholesky_solve(r.unsqueeze(-1), L).squeeze(-1)           # S^-1 r
    K_T = torch.cholesky_solve(A @ cov, L)                                 # S^-1 A Sigma = K^T
    m_post = mean + (cov @ A.transpose(1, 2) @ alpha.unsqueeze(-1)).squeeze(-1)
    C_sum = (cov.unsqueeze(0) - (A @ cov).transpose(1, 2) @ K_T).sum(0)
    return m_post, C_sum, gaussian_loglik(L, r, solved=alpha)  # log N(y_i | A_i mu, S_i), alpha reused


def ppca_project(cov: torch.Tensor, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """ML projection of a covariance onto U diag(s) U^T + tau I (rank None: full, tau = 0)."""
    evals, evecs = torch.linalg.eigh(0.5 * (cov + cov.T))
    evals, evecs = evals.flip(0).clamp_min(0), evecs.flip(1)
    d = cov.shape[0]
    if rank is None or rank >= d:
        return evecs, evals, 0.0
    tau = float(evals[rank:].mean())
    return evecs[:, :rank], (evals[:rank] - tau).clamp_min(0), tau


def fit_gaussian_em(op, y: torch.Tensor, x_shape: tuple[int, ...], noise_std: float, iterations: int,
                    rank: int | None = None, dense_max: int = 4096, block: int = 256,
                    progress: bool = False) -> GaussianEMResult:
    d = math.prod(x_shape)
    if d > dense_max:
        raise ConfigError(f"init: latent dimension {d} exceeds init.dense_max={dense_max}; raise it "
                          f"(memory ~ block * d^2 * 8 bytes)")
    n = y.shape[0]
    Y = y.reshape(n, -1).to(torch.float64)
    mean = torch.zeros(d, dtype=torch.float64)
    cov = torch.eye(d, dtype=torch.float64)
    history: list[float] = []
    U, s, tau = torch.eye(d, dtype=torch.float64), torch.ones(d, dtype=torch.float64), 0.0
    starts = list(range(0, n, block))
    m = Y.shape[1]
    cache: dict[int, torch.Tensor] | None = {} if n * m * d * 8 <= 2**30 else None  # keep A_i if < 1 GiB

    def block_matrices(i: int) -> torch.Tensor:
        if cache is not None and i in cache:
            return cache[i]
        j = min(i + block, n)
        A = dense_operator_matrices(op[i:j] if len(op) > 1 else op, j - i, x_shape)
        if cache is not None:
            cache[i] = A
        return A

    for _ in tqdm(range(iterations), desc="gaussian EM", disable=not progress):
        means, C_total, ll_total = [], torch.zeros(d, d, dtype=torch.float64), 0.0
        for i in starts:
            m_post, C_sum, ll = _estep_block(block_matrices(i), Y[i:i + block], mean, cov, noise_std**2)
            means.append(m_post)
            C_total += C_sum
            ll_total += float(ll.sum())
        history.append(ll_total / n)
        M = torch.cat(means)
        mean = M.mean(0)
        centred = M - mean
        cov_full = (C_total + centred.T @ centred) / n
        U, s, tau = ppca_project(cov_full, rank)
        cov = (U * s) @ U.T + tau * torch.eye(d, dtype=torch.float64)
    return GaussianEMResult(mean=mean, U=U, s=s, tau=tau, log_evidence=history)

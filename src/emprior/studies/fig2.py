"""The paper's Figure 2 study (Sec. 4.2): how good is q(x_t | y) for each guess of V[x | x_t]?

For each of ``n_manifolds`` random 1-d manifolds in R^3 (:class:`emprior.data.randman.RandomManifold`,
shape set by the optional keys ``n_freq``, ``smoothness``, ``scaling``; defaults 3, 1.0, "standard"
so configs without them keep their meaning). The presets use the official DiEM manifold generator
(10 sinusoids, alpha = 3, coordinates min-max scaled onto [-2, 2]); the paper does not state Fig. 2's
manifold parameters and the heuristics' gap depends on them (measured ratios: README, "Fig. 2", and
``tests/test_fig2.py``).

- prior p(x) = (1/K) sum_k N(x | mu_k, s^2 I), mu_k = f((k + 1/2) / K) evenly spaced on the manifold
  (K = ``n_components``, s = ``component_std``), so p(x_t), E[x | x_t], V[x | x_t] are exact
  (:class:`emprior.priors.mixture.GaussianMixtureDenoiser`);
- A in R^{1x3} with a row uniform on the sphere, x* ~ p(x), y = A x* + noise_std e.

For each sigma_t on a log grid:

- exact: p(x_t | y) = int p(x_t | x) p(x | y) dx is the exact posterior mixture p(x | y) noised by
  sigma_t, because x_t is independent of y given x;
- approximate, Eq. (18): q(x_t | y) ∝ p(x_t) N(y | A E[x | x_t], Sigma_y + A V A^T), with V one of
  "sigma_t" = sigma_t^2 I (Sigma_t), "inv" = (I + Sigma_t^-1)^-1, "prior" = (Sigma_x^-1 + Sigma_t^-1)^-1
  (Sigma_x the prior's covariance), "tweedie" = V[x | x_t] exactly (Eqs. (20)-(21)), and "zero" = 0
  (the DPS approximation, Eq. (16)).

Both posteriors are represented on one shared set of atoms x_t^(i) ~ r = (p(x_t | y) + p(x_t)) / 2
(a defensive mixture: the posterior half gives p its samples, the prior half covers the overly
dispersed q's) by self-normalised importance weights

    w_p ∝ p(x_t | y) / r(x_t),    w_q ∝ p(x_t) q(y | x_t) / r(x_t),

all of which are exact densities of Gaussian mixtures up to constants that the normalisation removes.
Sharing the atoms removes the finite-sample floor of comparing two independent sample sets: for
q = p the weighted measures coincide and the divergence is exactly zero. The reported number is the
debiased entropic Sinkhorn divergence S(w_p, w_q) (squared-Euclidean cost, regularisation ``reg``),
computed as :func:`emprior.evaluation.metrics.sinkhorn.sinkhorn_divergence` does with its default "torch" solver
(within a few % of converged values >= 1e-2; tiny values are small and non-negative but only
order-of-magnitude accurate); the figure shows its 25/50/75 percentiles over the manifolds for each
covariance and sigma_t, as the paper's Fig. 2.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from emprior.core.errors import ConfigError
from emprior.priors.gaussian import gaussian_loglik
from emprior.priors.mixture import GaussianMixture, GaussianMixtureDenoiser
from emprior.report.palette import key_of, style
from emprior.core.log import get_logger
from emprior.data.randman import RandomManifold
from emprior.evaluation.metrics.sinkhorn import regularized_ot, sinkhorn_divergence
from emprior.core.rng import numpy_rng, torch_generator

log = get_logger("emprior.studies.fig2")

COVARIANCES = ("tweedie", "prior", "inv", "sigma_t", "zero")
LABELS = {
    "tweedie": r"$\mathbb{V}[x \mid x_t]$",
    "prior": r"$(\Sigma_x^{-1} + \Sigma_t^{-1})^{-1}$",
    "inv": r"$(I + \Sigma_t^{-1})^{-1}$",
    "sigma_t": r"$\Sigma_t$",
    "zero": r"$0$ (DPS)",
}
DIM = 3  # R^3 as in the paper
_INTS = ("n_manifolds", "n_components", "n_sigmas", "n_samples")
_POSITIVE = ("component_std", "noise_std", "sigma_min", "sigma_max", "reg")
# Manifold shape and scaling (RandomManifold defaults; the presets use the official 10 / 3.0 / "minmax").
_OPTIONAL = {"n_freq": 3, "smoothness": 1.0, "scaling": "standard"}
SCALINGS = ("standard", "minmax")
COLUMNS = ["covariance", "sigma_t", "q25", "q50", "q75"]


class Fig2ConfigError(ConfigError, ValueError):
    """A bad ``fig2`` config value (a ValueError for callers, a ConfigError for the CLI)."""


def validate_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """Check the ``fig2`` config; return it with optional keys filled in. One-line errors."""
    if not isinstance(cfg, dict):
        raise Fig2ConfigError(f"fig2: config must be a mapping, got {type(cfg).__name__}")
    required = (*_INTS, *_POSITIVE, "covariances")
    missing = [k for k in required if k not in cfg]
    if missing:
        raise Fig2ConfigError(f"fig2: missing key(s) {', '.join(missing)}")
    unknown = sorted(set(cfg) - set(required) - set(_OPTIONAL))
    if unknown:
        raise Fig2ConfigError(f"fig2: unknown key(s) {', '.join(unknown)}")
    out = {**_OPTIONAL, **cfg}
    for key in (*_INTS, "n_freq"):
        v = out[key]
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise Fig2ConfigError(f"fig2.{key}: must be an integer >= 1, got {v!r}")
    if out["n_samples"] < 4:
        raise Fig2ConfigError(f"fig2.n_samples: must be >= 4, got {out['n_samples']!r}")
    for key in (*_POSITIVE, "smoothness"):
        v = out[key]
        ok = not isinstance(v, bool) and isinstance(v, (int, float, np.integer, np.floating)) \
            and math.isfinite(float(v)) and (v > 0 or (key == "smoothness" and v == 0))
        if not ok:
            raise Fig2ConfigError(f"fig2.{key}: must be a finite number > 0, got {v!r}")
    if not isinstance(out["scaling"], str) or out["scaling"] not in SCALINGS:
        raise Fig2ConfigError(f"fig2.scaling: must be one of {', '.join(SCALINGS)}, got {out['scaling']!r}")
    if out["sigma_min"] > out["sigma_max"]:
        raise Fig2ConfigError(f"fig2.sigma_min: {out['sigma_min']!r} exceeds sigma_max {out['sigma_max']!r}")
    if out["n_sigmas"] > 1 and out["sigma_min"] == out["sigma_max"]:
        raise Fig2ConfigError(f"fig2.n_sigmas: {out['n_sigmas']} values need sigma_min < sigma_max")
    covs = out["covariances"]
    if not isinstance(covs, (list, tuple)) or not covs:
        raise Fig2ConfigError(f"fig2.covariances: must be a non-empty list, got {covs!r}")
    for c in covs:
        if c not in COVARIANCES:
            raise Fig2ConfigError(f"fig2.covariances: unknown covariance {c!r} (choose from {', '.join(COVARIANCES)})")
    if len(set(covs)) != len(covs):
        raise Fig2ConfigError(f"fig2.covariances: duplicates in {list(covs)!r}")
    return out


def sigma_grid(cfg: dict[str, Any]) -> np.ndarray:
    """``n_sigmas`` log-spaced noise levels from sigma_min to sigma_max."""
    return np.geomspace(float(cfg["sigma_min"]), float(cfg["sigma_max"]), int(cfg["n_sigmas"]))


def make_problem(cfg: dict[str, Any], seed: int, index: int
                 ) -> tuple[GaussianMixture, torch.Tensor, torch.Tensor]:
    """Manifold ``index``: the prior mixture, A (1, 3) and y (1,), all float64."""
    rng = numpy_rng(seed, "fig2", index)
    manifold = RandomManifold(DIM, rng, n_freq=int(cfg["n_freq"]), smoothness=float(cfg["smoothness"]),
                              scaling=str(cfg["scaling"]))
    K = int(cfg["n_components"])
    means = torch.from_numpy(manifold((np.arange(K) + 0.5) / K))
    prior = GaussianMixture(torch.ones(K, dtype=torch.float64), means, float(cfg["component_std"]))
    row = rng.standard_normal(DIM)
    A = torch.from_numpy(row / np.linalg.norm(row))[None, :]  # uniform on the sphere S^2
    x_star = prior.sample(1, torch_generator(seed, "fig2", index, "x_star"))[0]
    y = A @ x_star + float(cfg["noise_std"]) * torch.from_numpy(rng.standard_normal(1))
    return prior, A, y


def covariance_guess(name: str, x_t: torch.Tensor, sigma: float, denoiser: GaussianMixtureDenoiser,
                     prior_cov: torch.Tensor) -> torch.Tensor:
    """The guess V (B, d, d) for V[x | x_t] named ``name`` (module docstring)."""
    B, d = x_t.shape
    eye = torch.eye(d, dtype=x_t.dtype)
    s2 = sigma**2
    if name == "tweedie":
        V = denoiser.covariance(x_t, sigma)
    elif name == "prior":
        # (Sigma_x^-1 + s2^-1 I)^-1 = s2 Sigma_x (Sigma_x + s2 I)^-1, no inverse of Sigma_x needed.
        V = s2 * torch.linalg.solve(prior_cov + s2 * eye, prior_cov)
        V = ((V + V.T) / 2).expand(B, d, d)
    elif name == "inv":
        V = (s2 / (1 + s2) * eye).expand(B, d, d)
    elif name == "sigma_t":
        V = (s2 * eye).expand(B, d, d)
    elif name == "zero":
        V = torch.zeros(B, d, d, dtype=x_t.dtype)
    else:
        raise ValueError(f"covariance_guess: unknown name {name!r}")
    return V


def _prune(w: torch.Tensor) -> torch.Tensor:
    """Zero the weights below 1e-15: the Sinkhorn solver then drops those atoms (they hold < n * 1e-15
    of the mass), which shrinks the problem a lot at small sigma_t where the posterior is tight."""
    return torch.where(w < 1e-15, torch.zeros_like(w), w)


def divergences_at(prior: GaussianMixture, A: torch.Tensor, y: torch.Tensor, noise_std: float,
                   sigma: float, covariances: list[str], n_samples: int, reg: float,
                   generator: torch.Generator) -> dict[str, float]:
    """S(p(x_t | y), q_V(x_t | y)) for each V in ``covariances`` at noise level ``sigma``."""
    posterior = prior.posterior(A, y, noise_std)
    p_t, post_t = prior.noised(sigma), posterior.noised(sigma)
    n_post = n_samples - n_samples // 2
    x_t = torch.cat([post_t.sample(n_post, generator), p_t.sample(n_samples - n_post, generator)])
    log_prior_t = p_t.log_prob(x_t)
    log_post_t = post_t.log_prob(x_t)
    log_r = torch.logaddexp(log_post_t, log_prior_t) - math.log(2)
    w_p = _prune(torch.softmax(log_post_t - log_r, 0))
    denoiser = GaussianMixtureDenoiser(prior)
    mean_y = denoiser(x_t, sigma) @ A.T  # A E[x | x_t], (B, 1)
    prior_cov = prior.moments()[1]
    noise_cov = noise_std**2 * torch.eye(A.shape[0], dtype=x_t.dtype)
    # All measures live on the atoms x_t (one temperature schedule); OT(p, p) is shared by all covariances.
    ot_pp = regularized_ot(x_t, x_t, reg, a=w_p, b=w_p)
    out = {}
    for name in covariances:
        V = covariance_guess(name, x_t, sigma, denoiser, prior_cov)
        # log N(y | mean_y, Sigma_y + A V A^T), Eq. (18)
        log_q_y = gaussian_loglik(torch.linalg.cholesky(noise_cov + A @ V @ A.T), y - mean_y)
        w_q = _prune(torch.softmax(log_prior_t + log_q_y - log_r, 0))
        out[name] = sinkhorn_divergence(x_t, x_t, reg, a=w_p, b=w_q, ot_xx=ot_pp)
    return out


def run_fig2(cfg: dict[str, Any], seed: int) -> pd.DataFrame:
    """Percentiles (25/50/75) over manifolds of S(p(x_t | y), q(x_t | y)) per covariance and sigma_t.

    Returns a DataFrame with columns covariance, sigma_t, q25, q50, q75 (covariances in config
    order, sigma_t ascending).
    """
    cfg = validate_config(cfg)
    sigmas = sigma_grid(cfg)
    covs = list(cfg["covariances"])
    values = np.empty((len(covs), len(sigmas), int(cfg["n_manifolds"])))
    for m in range(int(cfg["n_manifolds"])):
        prior, A, y = make_problem(cfg, seed, m)
        for j, sigma in enumerate(sigmas):
            gen = torch_generator(seed, "fig2", m, "samples", j)
            res = divergences_at(prior, A, y, float(cfg["noise_std"]), float(sigma), covs,
                                 int(cfg["n_samples"]), float(cfg["reg"]), gen)
            for i, name in enumerate(covs):
                values[i, j, m] = res[name]
        log.info("fig2: manifold %d/%d done", m + 1, cfg["n_manifolds"])
    q25, q50, q75 = np.percentile(values, [25, 50, 75], axis=2)
    rows = [{"covariance": name, "sigma_t": float(sigma), "q25": q25[i, j], "q50": q50[i, j],
             "q75": q75[i, j]} for i, name in enumerate(covs) for j, sigma in enumerate(sigmas)]
    return pd.DataFrame(rows, columns=COLUMNS)


def plot_fig2(df: pd.DataFrame):
    """Log-log median lines with 25-75 % shades, one colour per covariance (the paper's Fig. 2).

    Uses :class:`matplotlib.figure.Figure` directly (Agg canvas, no pyplot state). Values <= 0
    (a divergence at numerical zero) are drawn at a floor of 1e-12 on the log axis.
    """
    import seaborn as sns
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"plot_fig2: df lacks column(s) {', '.join(missing)}")
    floor = 1e-12
    names = list(dict.fromkeys(df["covariance"]))
    with sns.axes_style("whitegrid"), sns.plotting_context("paper"):
        fig = Figure(figsize=(6.6, 3.6), layout="constrained")
        FigureCanvasAgg(fig)
        ax = fig.add_subplot()
        for name in names:
            st = style(key_of(name))
            d = df[df["covariance"] == name].sort_values("sigma_t")
            s = d["sigma_t"].to_numpy()
            ax.fill_between(s, np.maximum(d["q25"].to_numpy(), floor), np.maximum(d["q75"].to_numpy(), floor),
                            color=st["color"], alpha=0.25, linewidth=0)
            ax.plot(s, np.maximum(d["q50"].to_numpy(), floor), color=st["color"], marker=st["marker"], markersize=4,
                    label=LABELS.get(name, name))
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"noise level $\sigma_t$")
        ax.set_ylabel(r"Sinkhorn divergence to $p(x \mid x_t, y)$")
        ax.set_title("Fig. 2: Gaussian posterior with each covariance estimate vs the true posterior\n"
                     "(median over manifolds, 25-75 % shaded)", fontsize="small")
        ax.legend(title=r"$\mathbb{V}[x \mid x_t]$ estimate", fontsize="small", title_fontsize="small",
                  loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    return fig


def main(cfg: dict[str, Any], seed: int, out_csv: str, out_png: str, provenance: dict[str, Any]) -> None:
    """Run the study and write the CSV and the PNG atomically (checksummed, with provenance)."""
    from emprior.core.artifacts import save_figure, save_text

    df = run_fig2(cfg, seed)
    save_text(out_csv, df.to_csv(index=False, float_format="%.6e"), provenance)
    save_figure(out_png, plot_fig2(df), provenance)

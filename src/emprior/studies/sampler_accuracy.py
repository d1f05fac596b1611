"""Paper Table 4 at CPU scale: posterior samplers scored as distributions against an exact posterior.

The paper (diem-arxiv App. E, Table 4) compares DPS, GDM (PiGDM), DiffPIR, TMPD and MMPS with 1, 3
and 5 solver iterations on FFHQ 256x256 with the DPS ADM prior, sampled by DDIM with eta = 1 (which is
DDPM, i.e. Algorithm 2 here) for 10, 100 and 1000 steps, all methods from the same seed, and reports
LPIPS, PSNR and SSIM of one sample per observation against the ground truth ([0, 1]-clipped images).
Those metrics reward a sampler for collapsing onto the posterior mean. Here the priors are *analytic*
Gaussian mixtures p(x) = sum_k w_k N(mu_k, C_k), so E[x | x_t] (and its Jacobian, Eq. (21)) is exact
(:class:`~emprior.priors.mixture.GaussianMixtureDenoiser`: the samplers get a perfect prior network)
and, y = A x + e being linear Gaussian, so is the posterior
(:meth:`~emprior.priors.mixture.GaussianMixture.posterior`)::

    p(x | y) = sum_k w_k' N(m_k', C_k'),   w_k' ∝ w_k N(y | A mu_k, A C_k A^T + Sigma_y).

Each method draws S samples per observation in one batch (S x N), and is scored against S direct
samples of p(x | y_i) as a *distribution* (:mod:`emprior.studies.sampler_scores`: sliced Wasserstein
distance with its Monte-Carlo floor, bias2 and spread of the E-step check, coverage of the exact
central 90 % per-pixel intervals); PSNR/SSIM (and LPIPS if ``lpips`` is configured) of every sample
are kept for orientation. The row ``Exact posterior`` is a third independent exact draw: it sits at
the floor, bias2 ~ 0, spread ~ 1, coverage90 ~ 0.9.

Priors (``priors: {name: spec}``; ``prior: spec`` is one prior named by its kind):
``gmm_digits``, a mixture fitted by EM (scikit-learn, full covariances + reg_covar I) to the 8x8
digits in [-1, 1], held-out images being the ground truth; ``gaussian_digits``, one Gaussian (the
control: MMPS's Gaussian projection is exact there, so a converged MMPS must reach the floor);
``gmm_separated``
(:mod:`emprior.studies.sampler_priors`), a few tight, well-separated class components, where the
Gaussian moment projection behind MMPS/TMPD/GDM is known to be poor, so the ranking is not one
prior's accident.

Tasks (paper -> 8x8 defaults of the CPU preset, the config decides): box inpainting 128 of 256 with
sigma_y = 1 -> box 4; random inpainting 98 % deleted, sigma_y = 0.01 -> 90 %; motion deblur kernel
61, intensity 0.5, sigma_y = 0.1 -> kernel 5; bicubic super-resolution x4, sigma_y = 0.1 -> x2.

Paper scale (FFHQ + the ADM checkpoint, ``prior: {kind: adm}``) is not this module: it raises a
one-line :class:`~emprior.core.errors.DataError`.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from emprior.core.artifacts import write_artifact
from emprior.report.markdown import frame_rows, pipe_table
from emprior.diffusion.samplers import DIFFUSION_SAMPLERS, sample
from emprior.diffusion.schedule import Schedule
from emprior.core.errors import ConfigError, DataError, NumericalError
from emprior.priors.mixture import GaussianMixture, GaussianMixtureDenoiser
from emprior.core.log import get_logger
from emprior.operators import LinearOperator, make_operator, measured_system
from emprior.posterior import PosteriorDenoiser, make_posterior
from emprior.core.rng import derive_seed, torch_generator
from emprior.studies.sampler_priors import gaussian_digits_prior, separated_digits_mixture, separation
from emprior.studies.sampler_scores import distribution_scores, mixture_quantiles

__all__ = [
    "COLUMNS",
    "DEFAULT_METHODS",
    "EXACT_LABEL",
    "PRIOR_KINDS",
    "TASK_ORDER",
    "Task",
    "build_prior",
    "check_prior",
    "exact_posterior_samples",
    "fit_digits_gmm",
    "image_scores",
    "main",
    "make_task",
    "markdown_table",
    "mmps_vs_dps",
    "paper_order",
    "run_benchmark",
    "run_method",
    "score_method",
]

log = get_logger("emprior.studies.sampler_accuracy")

X_SHAPE = (1, 8, 8)
PRIOR_KINDS = ("gmm_digits", "gmm_separated", "gaussian_digits", "adm")
PRIOR_ORDER = ("gaussian", "digits", "separated")
TASK_ORDER = ("box_inpainting", "random_inpainting", "motion_deblur", "super_resolution")
EXACT_LABEL = "Exact posterior"
DTYPES = {"float32": torch.float32, "float64": torch.float64}
DEFAULT_PROJECTIONS = 256

# Paper labels -> make_posterior options (Table 4: MMPS with the Tweedie covariance and GMRES).
# Like the paper, DPS and DiffPIR were tuned for the best results across the four tasks: on the
# CPU preset with another seed (1), grids zeta in {0.1, ..., 30} and lam in {0.03, ..., 10}, 10 and 100
# steps, best mean PSNR without diverging at 10 steps: zeta = 10, lam = 1.
DEFAULT_METHODS: dict[str, dict[str, Any]] = {
    "DiffPIR": {"method": "diffpir", "lam": 1.0},
    "DPS": {"method": "dps", "zeta": 10.0},
    "GDM": {"method": "pigdm"},
    "TMPD": {"method": "tmpd"},
    "MMPS (1)": {"method": "mmps", "covariance": "tweedie", "solver": "gmres", "maxiter": 1},
    "MMPS (3)": {"method": "mmps", "covariance": "tweedie", "solver": "gmres", "maxiter": 3},
    "MMPS (5)": {"method": "mmps", "covariance": "tweedie", "solver": "gmres", "maxiter": 5},
}


# ---------------------------------------------------------------------------------------------
# Config checks (one-line errors naming the key)
# ---------------------------------------------------------------------------------------------

def _get(cfg: dict[str, Any], key: str, where: str, default: Any = ...) -> Any:
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(cfg).__name__}")
    if key not in cfg:
        if default is ...:
            raise ConfigError(f"{where}.{key}: missing")
        return default
    return cfg[key]


def _pos_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise ConfigError(f"{where}: must be a positive integer, got {value!r}")
    return int(value)


def _pos_float(value: Any, where: str) -> float:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: must be a number, got {value!r}") from None
    if not (math.isfinite(f) and f > 0):
        raise ConfigError(f"{where}: must be a positive finite number, got {value!r}")
    return f


def paper_order(names: Any, order: tuple[str, ...]) -> list[str]:
    """Names in the paper's order (``order``), then any others alphabetically. Job configs reach the
    CLI as JSON with sorted keys, so the YAML order is lost; the tables use the paper's."""
    names = [str(n) for n in names]
    return [n for n in order if n in names] + sorted(n for n in names if n not in order)


def check_methods(methods: Any, where: str) -> dict[str, dict[str, Any]]:
    """``{label: {method: <make_posterior method>, **options}}`` in the paper's row order;
    None -> :data:`DEFAULT_METHODS`."""
    if methods is None:
        return {k: dict(v) for k, v in DEFAULT_METHODS.items()}
    if not isinstance(methods, dict) or not methods:
        raise ConfigError(f"{where}: expected a non-empty mapping label -> {{method: ..., options}}")
    for label, spec in methods.items():
        if not isinstance(spec, dict) or "method" not in spec:
            raise ConfigError(f"{where}.{label}: expected a mapping with a 'method' key, got {spec!r}")
    by_name = {str(k): v for k, v in methods.items()}
    return {label: dict(by_name[label]) for label in paper_order(by_name, tuple(DEFAULT_METHODS))}


def check_prior(prior: Any, where: str) -> dict[str, Any]:
    """A prior spec with its defaults filled in (``kind`` plus the kind's keys)."""
    kind = _get(prior, "kind", where)
    if kind == "adm":
        raise DataError(f"{where}.kind='adm': ADM/FFHQ prior not implemented yet (paper-scale Table 4 needs "
                        "the DPS FFHQ checkpoint and an ADM port); use kind 'gmm_digits'")
    keys = {"gmm_digits": {"kind", "components", "reg_covar", "max_iter"},
            "gmm_separated": {"kind", "classes", "shrink", "reg_covar"},
            "gaussian_digits": {"kind", "reg_covar"}}
    if kind not in keys:
        raise ConfigError(f"{where}.kind: must be one of {list(PRIOR_KINDS)}, got {kind!r}")
    unknown = sorted(set(prior) - keys[kind])
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    reg = _pos_float(_get(prior, "reg_covar", where, 1e-3), f"{where}.reg_covar")
    if kind == "gmm_digits":
        return {"kind": kind, "components": _pos_int(_get(prior, "components", where, 16), f"{where}.components"),
                "reg_covar": reg, "max_iter": _pos_int(_get(prior, "max_iter", where, 200), f"{where}.max_iter")}
    if kind == "gaussian_digits":
        return {"kind": kind, "reg_covar": reg}
    classes = _get(prior, "classes", where, [0, 1, 4, 7])
    if not isinstance(classes, (list, tuple)) or len(classes) < 2 or len(set(map(str, classes))) != len(classes) \
            or not all(isinstance(c, int) and not isinstance(c, bool) and 0 <= c <= 9 for c in classes):
        raise ConfigError(f"{where}.classes: expected at least 2 distinct digits 0..9, got {classes!r}")
    return {"kind": kind, "classes": [int(c) for c in classes], "reg_covar": reg,
            "shrink": _pos_float(_get(prior, "shrink", where, 0.05), f"{where}.shrink")}


def check_priors(cfg: dict[str, Any], where: str) -> dict[str, dict[str, Any]]:
    """``priors: {name: spec}`` (in :data:`PRIOR_ORDER`, then alphabetically) or ``prior: spec``
    (one prior, named by its kind); exactly one of the two."""
    if ("prior" in cfg) == ("priors" in cfg):
        raise ConfigError(f"{where}: give exactly one of 'prior' (one spec) or 'priors' (name -> spec)")
    if "prior" in cfg:
        spec = check_prior(cfg["prior"], f"{where}.prior")
        return {spec["kind"]: spec}
    priors = cfg["priors"]
    if not isinstance(priors, dict) or not priors:
        raise ConfigError(f"{where}.priors: expected a non-empty mapping name -> {{kind: ..., options}}")
    return {name: check_prior(priors[name], f"{where}.priors.{name}") for name in paper_order(priors, PRIOR_ORDER)}


# ---------------------------------------------------------------------------------------------
# Priors, tasks and exact posteriors
# ---------------------------------------------------------------------------------------------

def fit_digits_gmm(components: int, reg_covar: float, n_holdout: int, seed: int,
                   max_iter: int = 200) -> tuple[GaussianMixture, Tensor]:
    """Fit sum_k w_k N(mu_k, C_k + reg_covar I) to the digits in [-1, 1] minus ``n_holdout`` images.

    The held-out images (a seeded random subset) are returned as float64 (n_holdout, 1, 8, 8): they
    are the ground truth x of the benchmark, unseen by the prior as FFHQ test images would be.
    """
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from emprior.data.digits import load_digits

    images = load_digits().astype(np.float64) / 2.0  # [-2, 2] -> [-1, 1], the FFHQ/ADM range
    n = len(images)
    if not 1 <= n_holdout < n - components:
        raise ConfigError(f"n_observations: must be in [1, {n - components - 1}] for {components} "
                          f"components, got {n_holdout}")
    perm = np.random.default_rng(derive_seed(seed, "split")).permutation(n)
    test, train = images[perm[:n_holdout]], images[perm[n_holdout:]]
    sk = SkGaussianMixture(components, covariance_type="full", reg_covar=reg_covar, max_iter=max_iter,
                           random_state=derive_seed(seed, "gmm") % 2**32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # reported below, once, through our logger
        sk.fit(train.reshape(len(train), -1))
    if not sk.converged_:
        log.warning("GMM fit did not converge in %d EM iterations", max_iter)
    mix = GaussianMixture(torch.from_numpy(sk.weights_), torch.from_numpy(sk.means_),
                          torch.from_numpy(sk.covariances_))
    return mix, torch.from_numpy(test)


def build_prior(spec: dict[str, Any], n_truth: int, seed: int) -> tuple[GaussianMixture, Tensor, str]:
    """The mixture of a checked prior spec, ``n_truth`` ground truths (n, 1, 8, 8) float64 and a
    one-line description for the table's caption."""
    if spec["kind"] == "gmm_digits":
        mix, x = fit_digits_gmm(spec["components"], spec["reg_covar"], n_truth, seed, spec["max_iter"])
        return mix, x, (f"{mix.K}-component Gaussian mixture (full covariances, reg_covar {spec['reg_covar']:g}) "
                        "fitted to the 8x8 digits in [-1, 1], held-out digits as ground truths")
    if spec["kind"] == "gaussian_digits":
        mix, x = gaussian_digits_prior(spec["reg_covar"], n_truth, seed)
        return mix, x, (f"one Gaussian, the digits' mean and covariance (+ {spec['reg_covar']:g} I): p(x | x_t) "
                        "is Gaussian, so MMPS with a converged solver is exact; ground truths drawn from the prior")
    mix, x = separated_digits_mixture(spec["classes"], spec["shrink"], spec["reg_covar"], n_truth, seed)
    return mix, x, (f"{mix.K} digit classes {spec['classes']}, covariances shrunk x{spec['shrink']:g} "
                    f"(+ {spec['reg_covar']:g} I), closest means {separation(mix):.1f} widest radii apart; "
                    "ground truths drawn from the prior")


@dataclass
class Task:
    """One inverse problem: ground truth x (N, *x_shape), operator, y, and the exact p(x | y_i) with its
    moments and central 90 % per-pixel intervals."""

    name: str
    op: LinearOperator
    noise_std: float
    x: Tensor
    y: Tensor
    posteriors: list[GaussianMixture]
    mean: Tensor  # E[x | y_i], (N, *x_shape)
    std: Tensor  # sqrt(diag V[x | y_i]), (N, *x_shape)
    cov: Tensor | None = None  # V[x | y_i], (N, d, d)
    intervals: Tensor | None = None  # [q_0.05, q_0.95] per pixel, (N, 2, d)

    def __len__(self) -> int:
        return self.x.shape[0]


def make_task(name: str, spec: dict[str, Any], x: Tensor, mixture: GaussianMixture, seed: int) -> Task:
    """Draw the operator of ``spec`` ({operator, options, noise_std}) for each ground truth x_i, observe
    y_i = A_i x_i + noise_std e_i and condition the mixture on each y_i exactly (float64)."""
    where = f"sampler_benchmark.tasks.{name}"
    kind = _get(spec, "operator", where)
    noise_std = _pos_float(_get(spec, "noise_std", where), f"{where}.noise_std")
    options = _get(spec, "options", where, {}) or {}
    unknown = sorted(set(spec) - {"operator", "options", "noise_std"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    x = x.to(torch.float64)
    rng = np.random.default_rng(derive_seed(seed, "operator", name))
    try:
        op = make_operator(kind, len(x), tuple(x.shape[1:]), noise_std, rng, **options)
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    y = op.observe(x, generator=torch_generator(seed, "observe", name))
    posteriors, means, covs, intervals = [], [], [], []
    for i in range(len(x)):
        A, y_i = measured_system(op, i, y)
        post = mixture.posterior(A, y_i, noise_std)
        m, c = post.moments()
        posteriors.append(post)
        means.append(m)
        covs.append(c)
        intervals.append(mixture_quantiles(post, (0.05, 0.95)))
    shape = (len(x), *x.shape[1:])
    cov = torch.stack(covs)
    std = torch.diagonal(cov, dim1=-2, dim2=-1).clamp(min=0).sqrt()
    return Task(name, op, noise_std, x, y, posteriors, torch.stack(means).reshape(shape), std.reshape(shape),
                cov, torch.stack(intervals))


# ---------------------------------------------------------------------------------------------
# Sampling
# ---------------------------------------------------------------------------------------------

def run_method(denoiser: Any, task: Task, spec: dict[str, Any], steps: int, n_samples: int,
               schedule: Schedule, sampler: str, seed: int, dtype: torch.dtype = torch.float32,
               label: str = "") -> tuple[Tensor, dict[str, float]]:
    """``n_samples`` posterior samples per observation, (N, S, *x_shape) float64, and the posterior
    denoiser's per-call statistics (``PosteriorDenoiser.summary``) plus ``seconds``.

    x_T and the sampler's noise depend only on (seed, task, steps), so every method starts from the
    same x_T and sees the same noise, as in the paper ("all methods are executed with the same seed").
    """
    N, S = len(task), n_samples
    idx = np.repeat(np.arange(N), S)  # sample b belongs to observation b // S
    op = task.op[idx]
    y = task.y[torch.from_numpy(idx)].to(dtype)
    options = {k: v for k, v in spec.items() if k != "method"}
    try:
        post: PosteriorDenoiser = make_posterior(spec["method"], denoiser, op, y, **options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"sampler_benchmark.methods.{label or spec['method']}: {exc}") from None
    g_x = torch_generator(seed, "x_T", task.name, steps)
    x_T = schedule.sigma_max * torch.randn((N * S, *task.x.shape[1:]), generator=g_x, dtype=dtype)
    t0 = time.perf_counter()
    g_noise = torch_generator(seed, "noise", task.name, steps)
    x = sample(post, x_T, schedule, steps, sampler, generator=g_noise)
    stats = post.summary()
    stats["seconds"] = time.perf_counter() - t0
    return x.to(torch.float64).reshape(N, S, *task.x.shape[1:]), stats


def exact_posterior_samples(task: Task, n_samples: int, seed: int, stream: str = "exact") -> Tensor:
    """S direct samples from each exact p(x | y_i), (N, S, *x_shape) float64, from the random stream
    (seed, ``stream``, task): distinct streams give independent draws."""
    g = torch_generator(seed, stream, task.name)
    out = [post.sample(n_samples, generator=g) for post in task.posteriors]
    return torch.stack(out).reshape(len(task), n_samples, *task.x.shape[1:])


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def _to_unit(x: Tensor) -> Tensor:
    """[-1, 1] -> [0, 1], clipped (the mmps-benchmark evaluates clipped [0, 1] images)."""
    return ((x + 1) / 2).clamp(0, 1)


class LpipsScorer:
    """LPIPS on [0, 1] images, bilinearly resized to ``resize`` (8x8 is below AlexNet's receptive
    field); ``status`` is "ok" or the :class:`~emprior.evaluation.metrics.MetricUnavailable` reason."""

    def __init__(self, net: str = "alex", resize: int | None = 64, weights_dir: str | None = None):
        from emprior.evaluation.metrics import MetricUnavailable
        from emprior.evaluation.metrics.images import lpips_model

        self.resize = resize
        model = lpips_model(net, weights_dir)
        if isinstance(model, MetricUnavailable):
            self.model, self.status = None, model.reason
        else:
            self.model, self.status = model, "ok"

    def __call__(self, x: Tensor, ref: Tensor) -> float:
        if self.model is None:
            return float("nan")
        from emprior.evaluation.metrics.images import lpips_from_model

        if self.resize:
            def up(v: Tensor) -> Tensor:
                return torch.nn.functional.interpolate(v.float(), size=(self.resize, self.resize),
                                                       mode="bilinear", align_corners=False)

            x, ref = up(x), up(ref)
        try:
            return float(np.mean(lpips_from_model(self.model, x, ref, data_range=(0.0, 1.0))))
        except ValueError as exc:
            self.model, self.status = None, f"n/a: {exc}"
            return float("nan")


def image_scores(samples: Tensor, task: Task, lpips: LpipsScorer | None = None) -> dict[str, float]:
    """The paper's metrics: PSNR/SSIM (and LPIPS when a scorer is given) of every sample against its
    ground truth, [0, 1]-clipped, averaged over the N S samples as the paper averages over its samples."""
    from emprior.evaluation.metrics import psnr, ssim

    N, S = samples.shape[:2]
    flat = samples.reshape(N * S, *samples.shape[2:])
    ref = task.x.repeat_interleave(S, dim=0)
    x01, r01 = _to_unit(flat), _to_unit(ref)
    return {
        "lpips": lpips(x01, r01) if lpips is not None else float("nan"),
        "psnr": float(np.mean(psnr(x01, r01, data_range=(0.0, 1.0)))),
        "ssim": float(np.mean(ssim(x01, r01, data_range=(0.0, 1.0)))),
    }


def score_method(samples: Tensor, task: Task, exact: Tensor, independent: Tensor, n_projections: int,
                 seed: int, lpips: LpipsScorer | None = None) -> dict[str, float]:
    """Distribution scores (:func:`~emprior.studies.sampler_scores.distribution_scores`) against the
    reference draw ``exact`` with the floor from ``independent``, plus :func:`image_scores`."""
    n = len(task)
    dist = distribution_scores(samples.reshape(n, samples.shape[1], -1), exact, independent,
                               task.mean.reshape(n, -1), task.cov, task.intervals, n_projections, seed)
    return {**dist, **image_scores(samples, task, lpips)}


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

SCORE_KEYS = ("distance", "distance_se", "floor", "bias2", "spread", "coverage90", "psnr", "ssim", "lpips")
COLUMNS = ["prior", "task", "method", "steps", "distance", "floor", "bias2", "spread", "coverage90",
           "distance_se", "psnr", "ssim", "lpips", "vjps_per_step", "fallbacks", "status", "lpips_status"]


def run_benchmark(cfg: dict[str, Any], seed: int, lpips_weights_dir: str | None = None
                  ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """All (prior, task, steps, method) rows plus one exact-posterior row per (prior, task).

    Returns the table (:data:`COLUMNS`; ``status`` is "ok" or "diverged: ..." when the sampler produced
    NaN/Inf; ``lpips`` NaN unless ``lpips`` is configured) and a runtime record (seconds per row, total).
    """
    where = "sampler_benchmark"
    priors = check_priors(cfg, where)
    n_obs = _pos_int(_get(cfg, "n_observations", where), f"{where}.n_observations")
    n_samples = _pos_int(_get(cfg, "n_samples", where), f"{where}.n_samples")
    if n_samples < 2:
        raise ConfigError(f"{where}.n_samples: need at least 2 samples per observation, got {n_samples}")
    steps_list = _get(cfg, "steps", where)
    if not isinstance(steps_list, (list, tuple)) or not steps_list:
        raise ConfigError(f"{where}.steps: expected a non-empty list of step counts, got {steps_list!r}")
    steps_list = [_pos_int(s, f"{where}.steps") for s in steps_list]
    sampler = _get(cfg, "sampler", where, "ddpm")
    if sampler not in DIFFUSION_SAMPLERS.names():
        raise ConfigError(f"{where}.sampler: must be one of {DIFFUSION_SAMPLERS.names()}, got {sampler!r}")
    sched_cfg = _get(cfg, "schedule", where, {"sigma_min": 1e-3, "sigma_max": 1e2})
    try:
        schedule = Schedule(_get(sched_cfg, "sigma_min", f"{where}.schedule"),
                            _get(sched_cfg, "sigma_max", f"{where}.schedule"))
    except ValueError as exc:
        raise ConfigError(f"{where}.schedule: {exc}") from None
    dtype_name = _get(cfg, "dtype", where, "float32")
    if dtype_name not in DTYPES:
        raise ConfigError(f"{where}.dtype: must be one of {list(DTYPES)}, got {dtype_name!r}")
    methods = check_methods(_get(cfg, "methods", where, None), f"{where}.methods")
    tasks_cfg = _get(cfg, "tasks", where)
    if not isinstance(tasks_cfg, dict) or not tasks_cfg:
        raise ConfigError(f"{where}.tasks: expected a non-empty mapping name -> "
                          "{operator, options, noise_std}")
    dist_cfg = _get(cfg, "distance", where, {}) or {}
    if not isinstance(dist_cfg, dict) or sorted(set(dist_cfg) - {"n_projections"}):
        raise ConfigError(f"{where}.distance: expected {{n_projections: <int>}}, got {dist_cfg!r}")
    n_proj = _pos_int(dist_cfg.get("n_projections", DEFAULT_PROJECTIONS), f"{where}.distance.n_projections")
    lp_cfg = _get(cfg, "lpips", where, None)
    lpips = None if lp_cfg is None else LpipsScorer(lp_cfg.get("net", "alex"), lp_cfg.get("resize", 64),
                                                     lpips_weights_dir)
    known = {"prior", "priors", "n_observations", "n_samples", "steps", "sampler", "schedule", "dtype",
             "methods", "tasks", "lpips", "distance"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")

    t_start = time.perf_counter()
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    captions: dict[str, str] = {}
    for prior_name, prior_spec in priors.items():
        mixture, x, captions[prior_name] = build_prior(prior_spec, n_obs, seed)
        denoiser = GaussianMixtureDenoiser(mixture)
        log.info("prior %s: %s; %d observations x %d samples per task", prior_name, captions[prior_name],
                 n_obs, n_samples)
        for name in paper_order(tasks_cfg, TASK_ORDER):
            task = make_task(name, tasks_cfg[name], x, mixture, seed)
            sw_seed = derive_seed(seed, "sliced", prior_name, name) % 2**31
            exact = exact_posterior_samples(task, n_samples, seed, f"exact/{prior_name}")
            floor_draw = exact_posterior_samples(task, n_samples, seed, f"floor/{prior_name}")
            row_draw = exact_posterior_samples(task, n_samples, seed, f"exact-row/{prior_name}")
            ref = score_method(row_draw, task, exact, floor_draw, n_proj, sw_seed, lpips)
            rows.append({"prior": prior_name, "task": name, "method": EXACT_LABEL, "steps": pd.NA, **ref,
                         "vjps_per_step": 0.0, "fallbacks": 0, "status": "ok"})
            for steps in steps_list:
                for label, spec_m in methods.items():
                    try:
                        samples, stats = run_method(denoiser, task, spec_m, steps, n_samples, schedule, sampler,
                                                    seed, DTYPES[dtype_name], label)
                    except NumericalError as exc:  # a diverging sampler is a result, not a crash
                        log.warning("%s/%s steps=%d %s diverged: %s", prior_name, name, steps, label, exc)
                        rows.append({"prior": prior_name, "task": name, "method": label, "steps": steps,
                                     **{k: float("nan") for k in SCORE_KEYS}, "vjps_per_step": float("nan"),
                                     "fallbacks": 0, "status": f"diverged: {exc}"})
                        continue
                    scores = score_method(samples, task, exact, floor_draw, n_proj, sw_seed, lpips)
                    timing[f"{prior_name}/{name}/{steps}/{label}"] = round(stats["seconds"], 3)
                    log.info("%s/%s steps=%d %-9s SW2 %.4f (floor %.4f) bias2 %.3f spread %.3f cov90 %.3f (%.1fs)",
                             prior_name, name, steps, label, scores["distance"], scores["floor"], scores["bias2"],
                             scores["spread"], scores["coverage90"], stats["seconds"])
                    rows.append({"prior": prior_name, "task": name, "method": label, "steps": steps, **scores,
                                 "vjps_per_step": stats["vjps_per_call"], "fallbacks": int(stats["fallbacks"]),
                                 "status": "ok"})
    df = pd.DataFrame(rows)
    df["steps"] = df["steps"].astype("Int64")
    df["lpips_status"] = "not computed (no 'lpips' key)" if lpips is None else lpips.status
    runtime = {"seconds_total": round(time.perf_counter() - t_start, 3), "seconds": timing,
               "priors": captions}
    return df[COLUMNS], runtime


def mmps_vs_dps(df: pd.DataFrame, min_iterations: int = 3) -> pd.DataFrame:
    """Per (prior, task, steps): DPS's distance, the largest distance of the MMPS rows with >=
    ``min_iterations`` solver iterations, and whether every such MMPS row is closer than DPS."""
    mmps = df[df.method.str.fullmatch(r"MMPS \((\d+)\)")]
    mmps = mmps[mmps.method.str.extract(r"(\d+)", expand=False).astype(int) >= min_iterations]
    keys = ["prior", "task", "steps"]
    worst = mmps.groupby(keys, sort=False)["distance"].max(min_count=1).rename("mmps_worst")
    dps = df[df.method == "DPS"].set_index(keys)["distance"].rename("dps")
    out = pd.concat([worst, dps], axis=1, join="inner").reset_index()
    out["mmps_better"] = out.mmps_worst < out.dps
    return out


def markdown_table(df: pd.DataFrame, cfg: dict[str, Any], captions: dict[str, str] | None = None) -> str:
    """One markdown table per (prior, task), a caption stating the setup and the MMPS-vs-DPS check."""
    status = str(df["lpips_status"].iloc[0]) if len(df) else "ok"
    n_proj = (cfg.get("distance") or {}).get("n_projections", DEFAULT_PROJECTIONS)
    caption = (
        f"{cfg.get('n_observations')} observations per task, {cfg.get('n_samples')} samples per observation "
        f"and method (one batch), as many exact posterior samples; {cfg.get('sampler', 'ddpm')} sampler "
        "(= DDIM eta 1), same x_T and noise for all methods. distance: sliced 2-Wasserstein "
        f"({n_proj} directions, POT) between the method's and the exact samples, mean over observations "
        "(+/- standard error); floor: the same between two independent exact draws; bias2 and spread as "
        "the E-step check (0 and 1 are right); coverage90: fraction of samples inside the exact posterior's "
        "central 90 % per-pixel interval (0.9 is right). PSNR/SSIM on [0, 1]-clipped samples vs the ground "
        f"truth, for orientation. LPIPS: {status}."
    )
    lines = ["# Sampler accuracy (Table 4, CPU analogue): posterior samplers vs an exact posterior", "", caption]
    for name, text in (captions or {}).items():
        lines += ["", f"Prior `{name}`: {text}."]
    check = mmps_vs_dps(df)
    if len(check):
        bad = check[~check.mmps_better]
        lines += ["", f"MMPS with >= 3 solver iterations closer than DPS on {int(check.mmps_better.sum())} of "
                  f"{len(check)} (prior, task, steps)" + ("." if bad.empty else ": not on " + ", ".join(
                      f"{r.prior}/{r.task}/{r.steps}" for r in bad.itertuples()) + ".")]
    heads = ["method", "steps", "distance", "+/-", "floor", "bias2", "spread", "coverage90", "PSNR", "SSIM",
             "VJPs/step"]
    keys = [("method", 0), ("steps", 0), ("distance", 4), ("distance_se", 4), ("floor", 4), ("bias2", 3),
            ("spread", 3), ("coverage90", 3), ("psnr", 2), ("ssim", 3), ("vjps_per_step", 1)]
    for (prior, task), sub in df.groupby(["prior", "task"], sort=False):
        spec = cfg.get("tasks", {}).get(task, {})
        title = (f"## {prior}: {task} ({spec.get('operator')} {spec.get('options', {})}, "
                 f"sigma_y = {spec.get('noise_std')})")
        lines += ["", title, "", *pipe_table(heads, frame_rows(sub, keys))]
    return "\n".join(lines) + "\n"


def main(cfg: dict[str, Any], seed: int, out_csv: str, out_md: str, provenance: dict[str, Any] | None = None,
         lpips_weights_dir: str | None = None) -> pd.DataFrame:
    """Run the benchmark of section ``cfg`` (config key ``sampler_benchmark``) and write
    ``sampler_accuracy.csv`` and ``.md`` atomically with provenance (timings go to the sidecars'
    runtime record)."""
    df, runtime = run_benchmark(cfg, seed, lpips_weights_dir)
    csv = df.to_csv(index=False)
    md = markdown_table(df, cfg, runtime["priors"])
    write_artifact(out_csv, lambda tmp: tmp.write_text(csv), provenance, runtime)
    write_artifact(out_md, lambda tmp: tmp.write_text(md), provenance, runtime)
    log.info("sampler_accuracy: %d rows in %.1f s -> %s", len(df), runtime["seconds_total"], out_csv)
    return df

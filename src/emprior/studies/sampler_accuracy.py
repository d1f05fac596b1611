"""Paper Table 4 at CPU scale: posterior samplers on four linear inverse problems, exact posterior known.

The paper (diem-arxiv App. E, Table 4) compares DPS, GDM (PiGDM), DiffPIR, TMPD and MMPS with 1, 3
and 5 solver iterations on FFHQ 256x256 with the DPS ADM prior, sampled by DDIM with eta = 1 (which is
DDPM, i.e. Algorithm 2 here) for 10, 100 and 1000 steps, all methods from the same seed, and reports
LPIPS, PSNR and SSIM of one sample per observation against the ground truth ([0, 1]-clipped images).

Here the prior is *analytic*: a Gaussian mixture p(x) = sum_k w_k N(mu_k, C_k) fitted by EM
(scikit-learn, full covariances + reg_covar I) to scikit-learn's 8x8 digits scaled to [-1, 1] like
FFHQ, held-out images being the ground truth. Its exact denoiser E[x | x_t] (and Jacobian, Eq. (21))
is :class:`~emprior.priors.mixture.GaussianMixtureDenoiser`, so the samplers are compared with a perfect
prior network, and since y = A x + e is linear Gaussian the true posterior is again a mixture
(:meth:`~emprior.priors.mixture.GaussianMixture.posterior`)::

    p(x | y) = sum_k w_k' N(m_k', C_k'),   w_k' ∝ w_k N(y | A mu_k, A C_k A^T + Sigma_y).

That adds two metrics the paper cannot measure, computed from S samples per observation:

    mean_rmse = sqrt(mean_{i,j} (mean_s x_ijs - E[x_ij | y_i])^2)
    std_ratio = mean_{i,j} std_s(x_ijs) / sqrt(V[x_ij | y_i])         (std with ddof = 1)

(i: observation, j: pixel, s: sample). An exact sampler has mean_rmse ~ sqrt(mean_ij V[x_ij | y_i] / S)
and std_ratio ~ 1 (slightly below: E[std] < sigma for small S); the reference row ``Exact posterior``
(direct samples from p(x | y)) shows both floors. A method that collapses onto the mean (std_ratio
<< 1) can beat that row in PSNR/SSIM, which reward smooth predictions (as the paper remarks).

Tasks (paper -> 8x8 defaults of the CPU preset, the config decides): box inpainting 128 of 256 with
sigma_y = 1 -> box 4; random inpainting 98 % deleted, sigma_y = 0.01 -> 90 %; motion deblur kernel
61, intensity 0.5, sigma_y = 0.1 -> kernel 5; bicubic super-resolution x4, sigma_y = 0.1 -> x2.

Paper scale (FFHQ + the ADM checkpoint, ``prior: {kind: adm}``) is not implemented: it raises a
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

__all__ = [
    "DEFAULT_METHODS",
    "EXACT_LABEL",
    "PRIOR_KINDS",
    "TASK_ORDER",
    "Task",
    "attach_paper",
    "exact_posterior_samples",
    "fit_digits_gmm",
    "main",
    "make_task",
    "markdown_table",
    "paper_order",
    "run_benchmark",
    "run_method",
    "score_samples",
]

log = get_logger("emprior.studies.sampler_accuracy")

X_SHAPE = (1, 8, 8)
PRIOR_KINDS = ("gmm_digits", "adm")
TASK_ORDER = ("box_inpainting", "random_inpainting", "motion_deblur", "super_resolution")
EXACT_LABEL = "Exact posterior"
DTYPES = {"float32": torch.float32, "float64": torch.float64}

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
    kind = _get(prior, "kind", where)
    if kind == "adm":
        raise DataError(f"{where}.kind='adm': ADM/FFHQ prior not implemented yet (paper-scale Table 4 needs "
                        "the DPS FFHQ checkpoint and an ADM port); use kind 'gmm_digits'")
    if kind != "gmm_digits":
        raise ConfigError(f"{where}.kind: must be one of {list(PRIOR_KINDS)}, got {kind!r}")
    unknown = sorted(set(prior) - {"kind", "components", "reg_covar", "max_iter"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")
    return {"components": _pos_int(_get(prior, "components", where, 16), f"{where}.components"),
            "reg_covar": _pos_float(_get(prior, "reg_covar", where, 1e-3), f"{where}.reg_covar"),
            "max_iter": _pos_int(_get(prior, "max_iter", where, 200), f"{where}.max_iter")}


# ---------------------------------------------------------------------------------------------
# Prior, tasks and exact posteriors
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


@dataclass
class Task:
    """One inverse problem: ground truth x (N, *x_shape), operator, y, and the exact p(x | y_i)."""

    name: str
    op: LinearOperator
    noise_std: float
    x: Tensor
    y: Tensor
    posteriors: list[GaussianMixture]
    mean: Tensor  # E[x | y_i], (N, *x_shape)
    std: Tensor  # sqrt(diag V[x | y_i]), (N, *x_shape)

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
    posteriors, means, stds = [], [], []
    for i in range(len(x)):
        A, y_i = measured_system(op, i, y)
        post = mixture.posterior(A, y_i, noise_std)
        m, c = post.moments()
        posteriors.append(post)
        means.append(m)
        stds.append(torch.diagonal(c).clamp(min=0).sqrt())
    shape = (len(x), *x.shape[1:])
    return Task(name, op, noise_std, x, y, posteriors, torch.stack(means).reshape(shape),
                torch.stack(stds).reshape(shape))


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


def exact_posterior_samples(task: Task, n_samples: int, seed: int) -> Tensor:
    """S direct samples from each exact p(x | y_i) (the reference row), (N, S, *x_shape) float64."""
    g = torch_generator(seed, "exact", task.name)
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


def score_samples(samples: Tensor, task: Task, lpips: LpipsScorer | None = None) -> dict[str, float]:
    """PSNR/SSIM/LPIPS of every sample against its ground truth ([0, 1]-clipped, averaged over the N S
    samples as the paper averages over its samples) and the exact-posterior metrics of the module
    docstring (mean_rmse, std_ratio)."""
    from emprior.evaluation.metrics import psnr, ssim

    N, S = samples.shape[:2]
    flat = samples.reshape(N * S, *samples.shape[2:])
    ref = task.x.repeat_interleave(S, dim=0)
    x01, r01 = _to_unit(flat), _to_unit(ref)
    mean = samples.mean(dim=1)
    std = samples.std(dim=1, correction=1) if S > 1 else torch.full_like(mean, float("nan"))
    return {
        "lpips": lpips(x01, r01) if lpips is not None else float("nan"),
        "psnr": float(np.mean(psnr(x01, r01, data_range=(0.0, 1.0)))),
        "ssim": float(np.mean(ssim(x01, r01, data_range=(0.0, 1.0)))),
        "mean_rmse": float((mean - task.mean).square().mean().sqrt()),
        "std_ratio": float((std / task.std).mean()),
    }


# ---------------------------------------------------------------------------------------------
# The benchmark
# ---------------------------------------------------------------------------------------------

def run_benchmark(cfg: dict[str, Any], seed: int, lpips_weights_dir: str | None = None
                  ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """All (task, steps, method) rows of Table 4 plus one exact-posterior row per task.

    Returns the table (columns method, steps, task, lpips, psnr, ssim, mean_rmse, std_ratio,
    vjps_per_step, fallbacks, status ("ok" or "diverged: ..." when the sampler produced NaN/Inf),
    lpips_status) and a runtime record (seconds per row, total).
    """
    where = "sampler_benchmark"
    prior_cfg = check_prior(_get(cfg, "prior", where), f"{where}.prior")
    n_obs = _pos_int(_get(cfg, "n_observations", where), f"{where}.n_observations")
    n_samples = _pos_int(_get(cfg, "n_samples", where), f"{where}.n_samples")
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
    lp_cfg = _get(cfg, "lpips", where, {}) or {}
    lpips = LpipsScorer(lp_cfg.get("net", "alex"), lp_cfg.get("resize", 64), lpips_weights_dir)
    known = {"prior", "n_observations", "n_samples", "steps", "sampler", "schedule", "dtype", "methods",
             "tasks", "lpips"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}")

    t_start = time.perf_counter()
    mixture, x = fit_digits_gmm(prior_cfg["components"], prior_cfg["reg_covar"], n_obs, seed,
                                prior_cfg["max_iter"])
    denoiser = GaussianMixtureDenoiser(mixture)
    log.info("prior: %d-component GMM on the digits (reg_covar %g); %d observations x %d samples per task",
             mixture.K, prior_cfg["reg_covar"], n_obs, n_samples)
    rows: list[dict[str, Any]] = []
    timing: dict[str, float] = {}
    for name in paper_order(tasks_cfg, TASK_ORDER):
        task = make_task(name, tasks_cfg[name], x, mixture, seed)
        ref = score_samples(exact_posterior_samples(task, n_samples, seed), task, lpips)
        rows.append({"method": EXACT_LABEL, "steps": pd.NA, "task": name, **ref,
                     "vjps_per_step": 0.0, "fallbacks": 0, "status": "ok"})
        for steps in steps_list:
            for label, spec_m in methods.items():
                try:
                    samples, stats = run_method(denoiser, task, spec_m, steps, n_samples, schedule, sampler,
                                                seed, DTYPES[dtype_name], label)
                except NumericalError as exc:  # a diverging sampler is a result, not a crash
                    log.warning("%s steps=%d %s diverged: %s", name, steps, label, exc)
                    nan = float("nan")
                    rows.append({"method": label, "steps": steps, "task": name, "lpips": nan, "psnr": nan,
                                 "ssim": nan, "mean_rmse": nan, "std_ratio": nan, "vjps_per_step": nan,
                                 "fallbacks": 0, "status": f"diverged: {exc}"})
                    continue
                metrics = score_samples(samples, task, lpips)
                timing[f"{name}/{steps}/{label}"] = round(stats["seconds"], 3)
                log.info("%s steps=%d %-9s psnr %.2f ssim %.3f mean_rmse %.4f std_ratio %.3f (%.1fs)", name,
                         steps, label, metrics["psnr"], metrics["ssim"], metrics["mean_rmse"],
                         metrics["std_ratio"], stats["seconds"])
                rows.append({"method": label, "steps": steps, "task": name, **metrics,
                             "vjps_per_step": stats["vjps_per_call"], "fallbacks": int(stats["fallbacks"]),
                             "status": "ok"})
    df = pd.DataFrame(rows)
    df["steps"] = df["steps"].astype("Int64")
    df["lpips_status"] = lpips.status
    runtime = {"seconds_total": round(time.perf_counter() - t_start, 3), "seconds": timing}
    return df, runtime


def attach_paper(df: pd.DataFrame) -> pd.DataFrame:
    """Add paper_lpips, paper_psnr, paper_ssim from diem-arxiv Table 4, matched on method/steps/task."""
    from emprior.report.tables import paper_table

    paper = paper_table("table4")[["method", "steps", "task", "lpips", "psnr", "ssim"]]
    paper = paper.rename(columns={c: f"paper_{c}" for c in ("lpips", "psnr", "ssim")})
    paper["steps"] = paper["steps"].astype("Int64")
    out = df.merge(paper, on=["method", "steps", "task"], how="left")
    return out


COLUMNS = ["method", "steps", "task", "lpips", "psnr", "ssim", "mean_rmse", "std_ratio", "paper_lpips",
           "paper_psnr", "paper_ssim", "vjps_per_step", "fallbacks", "status", "lpips_status"]


def markdown_table(df: pd.DataFrame, cfg: dict[str, Any]) -> str:
    """One markdown table per task (ours next to the paper's), with a caption stating the setup."""
    status = str(df["lpips_status"].iloc[0]) if len(df) else "ok"
    prior = cfg.get("prior", {})
    caption = (
        f"Prior: {prior.get('components')}-component Gaussian mixture (full covariances, reg_covar "
        f"{prior.get('reg_covar')}) fitted to the 8x8 digits in [-1, 1]; {cfg.get('n_observations')} "
        f"held-out ground truths, {cfg.get('n_samples')} samples per observation, "
        f"{cfg.get('sampler', 'ddpm')} sampler "
        "(= DDIM eta 1), same seed for all methods. PSNR/SSIM/LPIPS on [0, 1]-clipped images, averaged over "
        "all samples. mean RMSE: sample mean vs exact E[x | y]; std ratio: sample std / exact posterior std "
        "(1 is right). Paper columns: diem-arxiv Table 4 (FFHQ 256, ADM prior) for orientation only."
    )
    lp = cfg.get("lpips") or {}
    lpips_note = status
    if status == "ok":
        lpips_note = f"{lp.get('net', 'alex')}, images resized to {lp.get('resize', 64)}"
    lines = ["# Table 4 (CPU analogue): posterior sampling with an analytic prior", "", caption, "",
             f"LPIPS: {lpips_note}"]
    heads = ["method", "steps", "LPIPS", "PSNR", "SSIM", "mean RMSE", "std ratio", "VJPs/step",
             "paper LPIPS", "paper PSNR", "paper SSIM"]
    keys = [("method", 0), ("steps", 0), ("lpips", 3), ("psnr", 2), ("ssim", 3), ("mean_rmse", 4),
            ("std_ratio", 3), ("vjps_per_step", 1), ("paper_lpips", 2), ("paper_psnr", 2), ("paper_ssim", 2)]
    for task, sub in df.groupby("task", sort=False):
        spec = cfg.get("tasks", {}).get(task, {})
        title = (f"## {task} ({spec.get('operator')} {spec.get('options', {})}, "
                 f"sigma_y = {spec.get('noise_std')})")
        lines += ["", title, "", *pipe_table(heads, frame_rows(sub, keys))]
    return "\n".join(lines) + "\n"


def main(cfg: dict[str, Any], seed: int, out_csv: str, out_md: str, provenance: dict[str, Any] | None = None,
         lpips_weights_dir: str | None = None) -> pd.DataFrame:
    """Run the benchmark of section ``cfg`` (config key ``sampler_benchmark``) and write ``table4.csv``
    and ``table4.md`` atomically with provenance (timings go to the sidecars' runtime record)."""
    df, runtime = run_benchmark(cfg, seed, lpips_weights_dir)
    df = attach_paper(df)[COLUMNS]
    csv = df.to_csv(index=False)
    md = markdown_table(df, cfg)
    write_artifact(out_csv, lambda tmp: tmp.write_text(csv), provenance, runtime)
    write_artifact(out_md, lambda tmp: tmp.write_text(md), provenance, runtime)
    log.info("table4: %d rows in %.1f s -> %s", len(df), runtime["seconds_total"], out_csv)
    return df

"""Table 4 analogue (emprior.studies.sampler_accuracy): exact posteriors, metrics, end to end on a tiny config."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from emprior.studies import sampler_accuracy as sb
from emprior.studies import sampler_priors as sprior
from emprior.studies import sampler_scores as sscores
from emprior.core.errors import ConfigError, DataError
from emprior.priors.gaussian import gaussian_posterior
from emprior.priors.mixture import GaussianMixture
from emprior.core.rng import torch_generator
from emprior.operators import bicubic_downsample_matrix, make_operator, measured_system

D64 = torch.float64
D = 64


def _random_gaussian_mixture(K: int, seed: int) -> GaussianMixture:
    g = torch.Generator().manual_seed(seed)
    means = 0.5 * torch.randn(K, D, generator=g, dtype=D64)
    covs = []
    for _ in range(K):
        B = torch.randn(D, D, generator=g, dtype=D64) / math.sqrt(D)
        covs.append(0.1 * B @ B.T + 1e-2 * torch.eye(D, dtype=D64))
    w = torch.rand(K, generator=g, dtype=D64) + 0.5
    return GaussianMixture(w, means, torch.stack(covs))


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(n, 1, 8, 8, generator=g, dtype=D64)).clamp(-1, 1)


# ---------------------------------------------------------------------------------------------
# Dense operators and exact posteriors
# ---------------------------------------------------------------------------------------------

def test_measured_system_pixel_mask_is_the_selection_matrix():
    op = make_operator("pixel_mask", 3, (1, 8, 8), 0.1, np.random.default_rng(0), deleted=0.5)
    for i in range(3):
        A = measured_system(op, i, torch.zeros(3, *op.y_shape))[0]
        keep = np.flatnonzero(op.params()["mask"][i].reshape(-1))
        assert A.shape == (len(keep), D)
        torch.testing.assert_close(A, torch.eye(D, dtype=D64)[torch.from_numpy(keep)], rtol=0, atol=0)


def test_measured_system_downsample_is_the_kronecker_product():
    op = make_operator("downsample", 1, (1, 8, 8), 0.1, np.random.default_rng(0), factor=2)
    M = bicubic_downsample_matrix(8, 2)
    A = measured_system(op, 0, torch.zeros(1, *op.y_shape))[0]
    torch.testing.assert_close(A, torch.from_numpy(np.kron(M, M)), rtol=0, atol=1e-14)


def test_gaussian_task_posterior_equals_closed_form_with_unmeasured_rows_kept():
    """K = 1: p(x | y) is Gaussian; dropping the zero rows of a mask (and their zero y entries) must
    give exactly the posterior of the full diagonal A = diag(mask) (Eq. (18) conditioning)."""
    mix = _random_gaussian_mixture(1, 1)
    x = _images(3, 2)
    spec = {"operator": "pixel_mask", "options": {"deleted": 0.6}, "noise_std": 0.05}
    task = sb.make_task("random_inpainting", spec, x, mix, seed=3)
    masks = task.op.params()["mask"]
    for i in range(3):
        A_full = torch.diag(torch.from_numpy(masks[i].reshape(-1).astype(np.float64)))
        m, C = gaussian_posterior(mix.means[0], mix.covs[0], A_full, task.y[i].reshape(-1), 0.05)
        torch.testing.assert_close(task.mean[i].reshape(-1), m, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(task.std[i].reshape(-1), torch.diagonal(C).sqrt(), rtol=1e-9, atol=1e-10)


def test_mixture_task_posterior_weights_follow_the_evidence():
    """Two far-apart components, one observation of component 0's mean through a blur: the exact
    posterior puts ~all its mass on component 0 and its mean is the Gaussian posterior of that one."""
    covs = 0.05 * torch.eye(D, dtype=D64).expand(2, D, D).clone()
    means = torch.stack([torch.full((D,), 0.5, dtype=D64), torch.full((D,), -0.5, dtype=D64)])
    mix = GaussianMixture(torch.tensor([0.5, 0.5], dtype=D64), means, covs)
    x = means[:1].reshape(1, 1, 8, 8)
    spec = {"operator": "blur", "options": {"kernel": "motion", "size": 5, "intensity": 0.5},
            "noise_std": 0.1}
    task = sb.make_task("motion_deblur", spec, x, mix, seed=0)
    post = task.posteriors[0]
    assert post.weights[0].item() > 1 - 1e-12
    A, y0 = measured_system(task.op, 0, task.y)
    m, _ = gaussian_posterior(means[0], covs[0], A, y0, 0.1)
    torch.testing.assert_close(task.mean[0].reshape(-1), m, rtol=1e-8, atol=1e-8)


def _sr_task(n: int = 8, K: int = 3, seed: int = 4):
    mix = _random_gaussian_mixture(K, seed)
    spec = {"operator": "downsample", "options": {"factor": 2}, "noise_std": 0.1}
    return sb.make_task("super_resolution", spec, _images(n, seed + 1), mix, seed=seed + 2)


def test_exact_posterior_samples_sit_at_the_floor():
    """A third exact draw vs the reference: distance within MC error of the floor (two independent
    exact draws), bias2 ~ 0, spread ~ 1, coverage90 ~ 0.9 (S = 64 per observation, N = 8)."""
    task = _sr_task()
    ref, ind, third = (sb.exact_posterior_samples(task, 64, 7, s) for s in ("a", "b", "c"))
    assert ref.shape == (8, 64, 1, 8, 8) and not torch.equal(ref, ind)
    res = sb.score_method(third, task, ref, ind, 128, seed=3)
    # per-observation SW2 of exact draws fluctuates by ~5 % of the floor; the mean over 8 by ~2 %
    assert res["distance"] == pytest.approx(res["floor"], rel=0.06)
    assert abs(res["bias2"]) < 0.02 and res["spread"] == pytest.approx(1.0, abs=0.06)
    assert res["coverage90"] == pytest.approx(0.9, abs=0.015)


def test_coverage90_of_exact_samples_is_ninety_percent():
    """E[coverage] = 0.9 exactly for exact samples; N S d = 6 * 400 * 64 draws (correlated across
    pixels): MC standard error ~ 0.3 %."""
    task = _sr_task(n=6, seed=10)
    x = sb.exact_posterior_samples(task, 400, 1).reshape(6, 400, -1)
    assert sscores.coverage(x, task.intervals[:, 0], task.intervals[:, 1]) == pytest.approx(0.9, abs=0.01)


def test_a_biased_sampler_is_detected():
    """Exact samples shifted by one posterior std per pixel: bias2 = mean_j V_jj / tr V = 1/d * d = 1 in
    expectation, coverage90 below 0.9, distance well above the floor; shrinking them to the exact mean
    gives spread 0 and (nearly) full coverage."""
    task = _sr_task()
    ref, ind, draw = (sb.exact_posterior_samples(task, 64, 7, s) for s in ("a", "b", "c"))
    shifted = draw + task.std[:, None]
    res = sb.score_method(shifted, task, ref, ind, 128, seed=3)
    assert res["bias2"] == pytest.approx(1.0, abs=0.15)
    assert res["coverage90"] < 0.75 and res["distance"] > 1.5 * res["floor"]
    assert res["spread"] == pytest.approx(1.0, abs=0.06)  # a shift keeps the spread
    collapsed = task.mean[:, None].expand_as(draw)
    res = sb.score_method(collapsed, task, ref, ind, 128, seed=3)
    assert res["spread"] < 1e-20 and res["coverage90"] > 0.97 and res["distance"] > res["floor"]


def test_sliced_w2_of_a_translation_is_its_norm_over_sqrt_d():
    """Translating a cloud by t shifts every projection by <theta, t>: SW2^2 = mean_theta <theta, t>^2
    -> |t|^2 / d for uniform directions (MC over 4000 directions: ~2 %); identical clouds give 0."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, D))
    t = rng.normal(size=D)
    got = sscores.sliced_w2(x + t, x, 4000, seed=1)
    assert got == pytest.approx(np.linalg.norm(t) / math.sqrt(D), rel=0.05)
    assert sscores.sliced_w2(x, x, 100, seed=1) == 0.0


def test_mixture_quantiles_invert_the_marginal_cdf():
    """K = 1: mu +/- 1.6449 sigma; K = 3: the mixture CDF at the returned quantiles is the level."""
    from scipy.stats import norm

    mix = _random_gaussian_mixture(1, 3)
    q = sscores.mixture_quantiles(mix, (0.05, 0.95))
    sd = torch.diagonal(mix.covs[0]).sqrt()
    torch.testing.assert_close(q[0], mix.means[0] - 1.6448536269514722 * sd, rtol=0, atol=1e-10)
    torch.testing.assert_close(q[1], mix.means[0] + 1.6448536269514722 * sd, rtol=0, atol=1e-10)
    mix = _random_gaussian_mixture(3, 5)
    q = sscores.mixture_quantiles(mix, (0.05, 0.5, 0.95)).numpy()
    w, mu = mix.weights.numpy(), mix.means.numpy()
    sd = np.sqrt(np.diagonal(mix.covs.numpy(), axis1=1, axis2=2))
    for level, qj in zip((0.05, 0.5, 0.95), q):
        cdf = (w[:, None] * norm.cdf((qj[None] - mu) / sd)).sum(0)
        np.testing.assert_allclose(cdf, level, atol=1e-12)


def test_image_scores_exact_values():
    """Ground truth 0 -> 0.5 on [0, 1]; samples at -0.2/+0.2 are 0.4/0.6 -> MSE 0.01, PSNR 20 dB;
    values beyond [-1, 1] are clipped first (a sample at +3 scores like one at +1)."""
    x = torch.zeros(3, 1, 8, 8, dtype=D64)
    op = make_operator("identity", 3, (1, 8, 8), 0.1, np.random.default_rng(0))
    task = sb.Task("t", op, 0.1, x, x.clone(), [], x, torch.ones_like(x))
    samples = torch.stack([x - 0.2, x + 0.2], dim=1)
    res = sb.image_scores(samples, task)
    assert res["psnr"] == pytest.approx(20.0, abs=1e-9) and math.isnan(res["lpips"])
    far = sb.image_scores(torch.full((3, 2, 1, 8, 8), 3.0, dtype=D64), task)
    edge = sb.image_scores(torch.full((3, 2, 1, 8, 8), 1.0, dtype=D64), task)
    assert far["psnr"] == edge["psnr"] == pytest.approx(10 * math.log10(1 / 0.25))


def test_separated_prior_is_separated_and_the_truth_is_drawn_from_it():
    from sklearn.datasets import load_digits

    mix, x = sprior.separated_digits_mixture([0, 1, 4, 7], 0.05, 1e-3, 5, seed=0)
    assert mix.K == 4 and x.shape == (5, 1, 8, 8) and x.dtype == D64
    images, labels = load_digits(return_X_y=True)
    np.testing.assert_allclose(mix.means[2].numpy(), (images[labels == 4] / 8 - 1).mean(0), atol=1e-12)
    assert sprior.separation(mix) == pytest.approx(4.0, abs=0.1)  # the closest means 4 radii apart
    # shrink 1 (the raw class covariances) overlaps: the closest means under one radius apart
    assert sprior.separation(sprior.separated_digits_mixture([0, 1, 4, 7], 1.0, 1e-3, 1, 0)[0]) < 1
    # the truth is the prior's own draw (its stream), so the prior is exactly right about it
    again = mix.sample(5, generator=torch_generator(0, "separated-truth")).reshape(5, 1, 8, 8)
    torch.testing.assert_close(x, again, rtol=0, atol=0)


def test_gaussian_control_converged_mmps_reaches_the_floor():
    """One Gaussian prior: Tweedie's covariance is exact, so MMPS (5) samples the exact posterior up to
    discretisation: at 50 DDPM steps its distance is at the floor (measured 0.1315 vs 0.1312) and bias2 ~ 0, while DPS stays clearly above (0.161, bias2 0.06)."""
    from emprior.diffusion.schedule import Schedule
    from emprior.priors.mixture import GaussianMixtureDenoiser
    from sklearn.datasets import load_digits

    mix, x = sprior.gaussian_digits_prior(1e-3, 4, seed=0)
    images = load_digits().data / 8 - 1
    np.testing.assert_allclose(mix.means[0].numpy(), images.mean(0), atol=1e-12)
    np.testing.assert_allclose(mix.covs[0].numpy(), np.cov(images, rowvar=False) + 1e-3 * np.eye(D), atol=1e-10)
    spec = {"operator": "pixel_mask", "options": {"deleted": 0.9}, "noise_std": 0.01}
    task = sb.make_task("random_inpainting", spec, x, mix, 0)
    ref, ind = (sb.exact_posterior_samples(task, 64, 0, s) for s in ("a", "b"))
    den, sched = GaussianMixtureDenoiser(mix), Schedule(1e-3, 100.0)
    res = {}
    for label in ("MMPS (5)", "DPS"):
        samples, _ = sb.run_method(den, task, sb.DEFAULT_METHODS[label], 50, 64, sched, "ddpm", 0)
        res[label] = sb.score_method(samples, task, ref, ind, 256, seed=5)
    mmps, dps = res["MMPS (5)"], res["DPS"]
    assert mmps["distance"] < 1.06 * mmps["floor"] and abs(mmps["bias2"]) < 0.02
    assert dps["distance"] > 1.15 * mmps["floor"] and dps["bias2"] > 0.03


def test_mmps_vs_dps_check():
    df = pd.DataFrame({"prior": ["p"] * 6, "task": ["t"] * 3 + ["u"] * 3, "steps": [10] * 6,
                       "method": ["DPS", "MMPS (1)", "MMPS (3)"] * 2, "distance": [1.0, 2.0, 0.5, 1.0, 0.1, 1.5]})
    out = sb.mmps_vs_dps(df)
    assert list(out.mmps_better) == [True, False] and list(out.mmps_worst) == [0.5, 1.5]


# ---------------------------------------------------------------------------------------------
# Config errors
# ---------------------------------------------------------------------------------------------

SR_TASK = {"super_resolution": {"operator": "downsample", "options": {"factor": 2}, "noise_std": 0.1}}


def test_adm_prior_is_a_clear_data_error(tmp_path):
    cfg = {"prior": {"kind": "adm"}, "n_observations": 2, "n_samples": 2, "steps": [10], "tasks": {}}
    with pytest.raises(DataError) as exc:
        sb.main(cfg, 0, str(tmp_path / "t.csv"), str(tmp_path / "t.md"))
    msg = str(exc.value)
    assert "\n" not in msg and "adm" in msg and "not implemented" in msg
    assert not (tmp_path / "t.csv").exists()


@pytest.mark.parametrize("patch, needle", [
    ({"prior": {"kind": "vae"}}, "prior.kind"),
    ({"steps": [0]}, "steps"),
    ({"methods": {"DPS": {"zeta": 1.0}}}, "methods.DPS"),
    ({"dtype": "float16"}, "dtype"),
    ({"extra": 1}, "'extra'"),
    ({"priors": {"a": {"kind": "gmm_separated"}}}, "exactly one of 'prior'"),
    ({"prior": {"kind": "gmm_separated", "classes": [1, 1]}}, "prior.classes"),
    ({"prior": {"kind": "gmm_separated", "components": 3}}, "'components'"),
    ({"distance": {"n_projections": 0}}, "distance.n_projections"),
    ({"n_samples": 1}, "n_samples"),
])
def test_bad_config_names_the_key(patch, needle):
    cfg = {"prior": {"kind": "gmm_digits", "components": 2}, "n_observations": 2, "n_samples": 2,
           "steps": [10], "tasks": SR_TASK}
    cfg.update(patch)
    with pytest.raises(ConfigError) as exc:
        sb.run_benchmark(cfg, 0)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_posterior_option_names_the_method():
    cfg = {"prior": {"kind": "gmm_separated"}, "n_observations": 2,
           "n_samples": 2, "steps": [2], "methods": {"DPS": {"method": "dps", "lam": 1.0}}, "tasks": SR_TASK}
    with pytest.raises(ConfigError, match=r"methods\.DPS: .*'lam'"):
        sb.run_benchmark(cfg, 0)


# ---------------------------------------------------------------------------------------------
# End to end
# ---------------------------------------------------------------------------------------------

def test_fit_digits_gmm_holds_out_the_ground_truth():
    mix, x = sb.fit_digits_gmm(2, 1e-3, 5, seed=0, max_iter=5)
    assert x.shape == (5, 1, 8, 8) and x.dtype == D64
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert mix.K == 2 and mix.d == D
    assert float(mix.weights.sum()) == pytest.approx(1.0)
    # reg_covar floors every component's spectrum (constant border pixels of the digits)
    assert float(mix.lam.min()) >= 1e-3 * (1 - 1e-6)


def test_main_writes_sampler_accuracy_for_two_priors(tmp_path):
    cfg = {
        # rows: the known prior names first (digits, separated), then the others alphabetically, then the
        # paper's task and method order, whatever the key order (gmm_separated: no slow GMM fit here)
        "priors": {"zeta": {"kind": "gmm_separated", "classes": [2, 3, 5], "shrink": 0.1},
                   "separated": {"kind": "gmm_separated", "classes": [0, 1], "shrink": 0.05}},
        "n_observations": 2, "n_samples": 4, "steps": [3], "sampler": "ddpm",
        "schedule": {"sigma_min": 1e-3, "sigma_max": 100.0}, "distance": {"n_projections": 16},
        "methods": {"MMPS (3)": {"method": "mmps", "covariance": "tweedie", "solver": "gmres", "maxiter": 3},
                    "DPS": {"method": "dps", "zeta": 10.0}},
        "tasks": {"super_resolution": {"operator": "downsample", "options": {"factor": 2}, "noise_std": 0.1},
                  "box_inpainting": {"operator": "box_mask", "options": {"box": 4}, "noise_std": 1.0}},
    }
    out_csv, out_md = tmp_path / "sampler_accuracy.csv", tmp_path / "sampler_accuracy.md"
    df = sb.main(cfg, 0, str(out_csv), str(out_md), {"rule": "sampler_accuracy"})
    read = pd.read_csv(out_csv)
    assert list(read.columns)[:9] == ["prior", "task", "method", "steps", "distance", "floor", "bias2", "spread",
                                      "coverage90"]
    assert len(read) == 2 * 2 * (1 + 2)
    assert list(read.prior) == ["separated"] * 6 + ["zeta"] * 6
    assert list(read.task[:6]) == ["box_inpainting"] * 3 + ["super_resolution"] * 3
    assert list(read.method[:3]) == ["Exact posterior", "DPS", "MMPS (3)"]
    assert read[read.method == "Exact posterior"].steps.isna().all() and (read.steps.dropna() == 3).all()
    assert (read.distance > 0).all() and (read.floor > 0).all() and read.coverage90.between(0, 1).all()
    # one floor per (prior, task): every method is compared with the same exact draws
    assert (read.groupby(["prior", "task"]).floor.nunique() == 1).all()
    assert read.psnr.between(5, 60).all() and read.lpips.isna().all()
    md = out_md.read_text()
    assert "## separated: box_inpainting" in md and "## zeta: super_resolution" in md and "| DPS | 3 |" in md
    assert "Prior `separated`: 2 digit classes [0, 1]" in md and "closer than DPS on" in md
    side = json.loads((tmp_path / "sampler_accuracy.csv.prov.json").read_text())
    assert side["provenance"]["rule"] == "sampler_accuracy" and side["runtime"]["seconds_total"] > 0
    # same seed -> bit-identical table
    df2, _ = sb.run_benchmark(cfg, 0)
    pd.testing.assert_frame_equal(df.reset_index(drop=True), df2.reset_index(drop=True))


def test_methods_share_x_T_and_noise():
    """Same seed for all methods: a method whose guidance vanishes (DPS with zeta = 0) reproduces the
    unconditional DDPM sample bit for bit, whatever other methods ran before it."""
    from emprior.diffusion import Schedule, sample
    from emprior.priors.mixture import GaussianMixtureDenoiser
    from emprior.core.rng import torch_generator

    mix = _random_gaussian_mixture(2, 8)
    spec = {"operator": "downsample", "options": {"factor": 2}, "noise_std": 0.1}
    task = sb.make_task("super_resolution", spec, _images(2, 9), mix, seed=1)
    den = GaussianMixtureDenoiser(mix)
    sched = Schedule(1e-3, 100.0)
    sb.run_method(den, task, {"method": "tmpd"}, 5, 3, sched, "ddpm", seed=11)
    got, stats = sb.run_method(den, task, {"method": "dps", "zeta": 0.0}, 5, 3, sched, "ddpm", seed=11)
    x_T = 100.0 * torch.randn((6, 1, 8, 8), generator=torch_generator(11, "x_T", "super_resolution", 5),
                              dtype=torch.float32)
    ref = sample(den, x_T, sched, 5, "ddpm", generator=torch_generator(11, "noise", "super_resolution", 5))
    torch.testing.assert_close(got.reshape(6, 1, 8, 8), ref.to(D64), rtol=0, atol=0)
    assert stats["vjps_per_call"] == 1.0


def test_a_diverging_method_is_a_row_not_a_crash():
    """DPS with an absurd step (zeta = 1e30) overflows float32: its row says so, the others still run."""
    cfg = {"prior": {"kind": "gmm_separated"}, "n_observations": 2, "n_samples": 2, "steps": [3], "tasks": SR_TASK,
           "methods": {"DPS": {"method": "dps", "zeta": 1e30}, "GDM": {"method": "pigdm"}}}
    df, _ = sb.run_benchmark(cfg, 0)
    dps, gdm = df[df.method == "DPS"].iloc[0], df[df.method == "GDM"].iloc[0]
    assert dps.status.startswith("diverged: non-finite") and math.isnan(dps.distance)
    assert gdm.status == "ok" and gdm.distance > 0 and 5 < gdm.psnr < 60


def test_cli_command_writes_the_rule_outputs(tmp_path):
    """`python -m emprior sampler-accuracy` (the rule's command) on a tiny config: both files, the
    rule's name in the provenance."""
    from emprior.pipeline.cli import main

    bench = {"prior": {"kind": "gmm_separated", "classes": [0, 1]}, "n_observations": 2, "n_samples": 2,
             "steps": [2], "tasks": SR_TASK, "methods": {"DPS": {"method": "dps", "zeta": 10.0}}}
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"seed": 0, "results": str(tmp_path), "metrics": {}, "sampler_benchmark": bench,
                               "experiments": {}}))
    out_csv, out_md = tmp_path / "sampler_accuracy.csv", tmp_path / "sampler_accuracy.md"
    rc = main(["sampler-accuracy", "--config", str(cfg), "--out-csv", str(out_csv), "--out-md", str(out_md),
               "--threads", "1"])
    assert rc == 0
    read = pd.read_csv(out_csv)
    assert list(read.method) == ["Exact posterior", "DPS"] and (read.prior == "gmm_separated").all()
    assert "## gmm_separated: super_resolution" in out_md.read_text()
    side = json.loads((tmp_path / "sampler_accuracy.csv.prov.json").read_text())
    assert side["provenance"]["rule"] == "sampler_accuracy"

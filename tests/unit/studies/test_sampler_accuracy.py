"""Table 4 analogue (emprior.studies.sampler_accuracy): exact posteriors, metrics, end to end on a tiny config."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from emprior.studies import sampler_accuracy as sb
from emprior.core.errors import ConfigError, DataError
from emprior.priors.gaussian import gaussian_posterior
from emprior.priors.mixture import GaussianMixture
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


def test_exact_posterior_samples_calibrate_the_metrics():
    """Direct samples from p(x | y): std_ratio -> E[s]/sigma = c4(S) ~ 1 and mean_rmse ->
    sqrt(mean V / S). With S = 400: c4 = 0.99937; Monte Carlo error of both ~ 1-4 %."""
    mix = _random_gaussian_mixture(3, 4)
    spec = {"operator": "downsample", "options": {"factor": 2}, "noise_std": 0.1}
    task = sb.make_task("super_resolution", spec, _images(4, 5), mix, seed=6)
    S = 400
    samples = sb.exact_posterior_samples(task, S, seed=7)
    assert samples.shape == (4, S, 1, 8, 8)
    res = sb.score_samples(samples, task)
    assert res["std_ratio"] == pytest.approx(1.0, abs=0.04)
    expected = math.sqrt(float(task.std.square().mean()) / S)
    assert res["mean_rmse"] == pytest.approx(expected, rel=0.12)


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------

def _manual_task(x, mean, std):
    op = make_operator("identity", 1, (1, 8, 8), 0.1, np.random.default_rng(0))
    return sb.Task("t", op, 0.1, x, x.clone(), [], mean, std)


def test_score_samples_exact_values():
    """Two samples m +/- s/sqrt(2): sample mean m (mean_rmse 0), ddof-1 std s (std_ratio 1).
    Ground truth 0 -> 0.5 on [0, 1]; samples at -0.2/+0.2 are 0.4/0.6 -> MSE 0.01, PSNR 20 dB."""
    g = torch.Generator().manual_seed(0)
    n = 3
    x = torch.zeros(n, 1, 8, 8, dtype=D64)
    std = torch.full((n, 1, 8, 8), 0.2 * math.sqrt(2), dtype=D64)
    task = _manual_task(x, torch.zeros_like(x), std)
    a = std / math.sqrt(2)
    samples = torch.stack([-a, a], dim=1)
    res = sb.score_samples(samples, task)
    assert res["mean_rmse"] == 0.0
    assert res["std_ratio"] == pytest.approx(1.0, abs=1e-12)
    assert res["psnr"] == pytest.approx(20.0, abs=1e-9)
    assert math.isnan(res["lpips"])
    # collapsed samples: all equal to a shifted mean
    shift = 0.1 * torch.randn(n, 1, 8, 8, generator=g, dtype=D64)
    res = sb.score_samples((x + shift).unsqueeze(1).expand(n, 4, 1, 8, 8), task)
    assert res["std_ratio"] == 0.0
    assert res["mean_rmse"] == pytest.approx(float(shift.square().mean().sqrt()), rel=1e-12)


def test_scores_clip_to_unit_range():
    """Values beyond [-1, 1] are clipped first: a sample at +3 scores like one at +1."""
    x = torch.zeros(1, 1, 8, 8, dtype=D64)
    task = _manual_task(x, x, torch.ones_like(x))
    far = sb.score_samples(torch.full((1, 2, 1, 8, 8), 3.0, dtype=D64), task)
    edge = sb.score_samples(torch.full((1, 2, 1, 8, 8), 1.0, dtype=D64), task)
    assert far["psnr"] == edge["psnr"] == pytest.approx(10 * math.log10(1 / 0.25))


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
])
def test_bad_config_names_the_key(patch, needle):
    cfg = {"prior": {"kind": "gmm_digits", "components": 2}, "n_observations": 2, "n_samples": 2,
           "steps": [10], "tasks": SR_TASK}
    cfg.update(patch)
    with pytest.raises(ConfigError) as exc:
        sb.run_benchmark(cfg, 0)
    assert needle in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_posterior_option_names_the_method():
    cfg = {"prior": {"kind": "gmm_digits", "components": 2, "max_iter": 5}, "n_observations": 2,
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


def test_main_writes_table4_with_paper_columns(tmp_path):
    cfg = {
        "prior": {"kind": "gmm_digits", "components": 3, "reg_covar": 1e-3, "max_iter": 20},
        "n_observations": 3, "n_samples": 2, "steps": [10], "sampler": "ddpm",
        "schedule": {"sigma_min": 1e-3, "sigma_max": 100.0},
        "methods": {"DPS": {"method": "dps", "zeta": 10.0}, "DiffPIR": {"method": "diffpir", "lam": 1.0},
                    "MMPS (1)": {"method": "mmps", "covariance": "tweedie", "solver": "gmres", "maxiter": 1}},
        # reversed on purpose: rows come in the paper's task and method order whatever the key order
        "tasks": {"super_resolution": {"operator": "downsample", "options": {"factor": 2}, "noise_std": 0.1},
                  "box_inpainting": {"operator": "box_mask", "options": {"box": 4}, "noise_std": 1.0}},
        "lpips": {"net": "alex", "resize": 64},
    }
    out_csv, out_md = tmp_path / "table4.csv", tmp_path / "table4.md"
    df = sb.main(cfg, 0, str(out_csv), str(out_md), {"rule": "table4"}, lpips_weights_dir=str(tmp_path))
    read = pd.read_csv(out_csv)
    assert list(read.columns)[:11] == ["method", "steps", "task", "lpips", "psnr", "ssim", "mean_rmse",
                                       "std_ratio", "paper_lpips", "paper_psnr", "paper_ssim"]
    assert len(read) == 2 * (1 + 3)
    assert list(read.task) == ["box_inpainting"] * 4 + ["super_resolution"] * 4
    assert list(read.method[:4]) == ["Exact posterior", "DiffPIR", "DPS", "MMPS (1)"]
    row = read[(read.method == "DPS") & (read.task == "box_inpainting")].iloc[0]
    assert row.steps == 10 and row.paper_psnr == 10.41 and row.paper_ssim == 0.34 and row.paper_lpips == 0.64
    row = read[(read.method == "MMPS (1)") & (read.task == "super_resolution")].iloc[0]
    assert row.paper_psnr == 26.94 and row.vjps_per_step == 1.0  # the paper's code: 2 (see emprior.linalg.batched)
    assert read[read.method == "DPS"].vjps_per_step.eq(1.0).all()
    assert read[read.method == "DiffPIR"].vjps_per_step.eq(0.0).all()
    exact = read[read.method == "Exact posterior"]
    assert exact.steps.isna().all() and exact.paper_psnr.isna().all()
    assert read.psnr.between(5, 60).all() and read.ssim.between(-1, 1).all()
    assert (read.mean_rmse > 0).all() and (read.std_ratio > 0).all()
    # no LPIPS weights in tmp_path: NaN plus the reason
    assert read.lpips.isna().all() and read.lpips_status.str.startswith("n/a").all()
    md = out_md.read_text()
    assert "## box_inpainting" in md and "## super_resolution" in md and "| DPS | 10 |" in md
    side = json.loads((tmp_path / "table4.csv.prov.json").read_text())
    assert side["provenance"]["rule"] == "table4" and side["runtime"]["seconds_total"] > 0
    # same seed -> bit-identical table
    df2, _ = sb.run_benchmark(cfg, 0, lpips_weights_dir=str(tmp_path))
    ours = df.drop(columns=["paper_lpips", "paper_psnr", "paper_ssim"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(ours, df2[ours.columns])


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
    cfg = {"prior": {"kind": "gmm_digits", "components": 2, "max_iter": 5}, "n_observations": 2,
           "n_samples": 2, "steps": [3], "tasks": SR_TASK,
           "methods": {"DPS": {"method": "dps", "zeta": 1e30}, "GDM": {"method": "pigdm"}}}
    df, _ = sb.run_benchmark(cfg, 0)
    dps, gdm = df[df.method == "DPS"].iloc[0], df[df.method == "GDM"].iloc[0]
    assert dps.status.startswith("diverged: non-finite") and math.isnan(dps.psnr)
    assert gdm.status == "ok" and 5 < gdm.psnr < 60

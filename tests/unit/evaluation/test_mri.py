"""The MRI experiment's science pieces: PPCA of the sampled q_0, PSNR / SSIM of reconstructions, the MRI
table, and the E-step's several posterior samples per observation as the M-step sees them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from emprior.core.errors import ConfigError
from emprior.evaluation.mri import mri_settings, psnr_ssim, quality_rows, to_unit
from emprior.priors.gaussian_mc import ppca_from_samples
from emprior.report.mri_table import write_mri_table


def test_ppca_of_samples_is_the_ml_fit():
    rng = np.random.default_rng(0)
    d, r, n = 12, 3, 400
    W = rng.normal(size=(d, r)) * 2.0
    x = torch.as_tensor(rng.normal(size=(n, r)) @ W.T + 0.3 * rng.normal(size=(n, d)) + 1.5)
    mean, U, s, tau = ppca_from_samples(x, rank=r)
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(U.T @ U, torch.eye(r, dtype=torch.float64))
    # U diag(s) U^T + tau I has the sample covariance's top-r eigenpairs and trace (Tipping & Bishop)
    cov = torch.cov(x.T, correction=0)
    evals = torch.linalg.eigvalsh(cov).flip(0)
    model = (U * s) @ U.T + tau * torch.eye(d, dtype=torch.float64)
    torch.testing.assert_close(torch.trace(model), torch.trace(cov))
    torch.testing.assert_close(s + tau, evals[:r])
    assert abs(tau - float(evals[r:].mean())) < 1e-10
    assert abs(tau - 0.09) < 0.02  # the added isotropic noise 0.3^2
    # fewer samples than the rank: the rank shrinks to what the samples span
    _, U2, s2, _ = ppca_from_samples(x[:2], rank=r)
    assert U2.shape == (d, 2) and s2.shape == (2,)


def test_psnr_ssim_known_values():
    truth = np.full((2, 1, 16, 16), -2.0)
    truth[:, :, 4:12, 4:12] = 2.0
    est = truth + 0.4  # 0.1 on [0, 1], clipped where truth is 2 (then exact there)
    p, s = psnr_ssim(truth, est)
    frac = (16 * 16 - 64) / (16 * 16)  # pixels off by 0.1
    assert abs(p - 10 * np.log10(1 / (0.01 * frac))) < 1e-9
    assert 0 < s < 1
    assert psnr_ssim(truth, truth + 1e-9)[1] == pytest.approx(1.0)
    np.testing.assert_array_equal(to_unit(np.array([-3.0, -2.0, 0.0, 2.0, 5.0])), [0, 0, 0.5, 1, 1])


def test_quality_rows_and_table(tmp_path):
    rng = np.random.default_rng(1)
    truth = rng.uniform(-2, 2, (3, 1, 16, 16))
    recon = {f"R{R}": {"samples": truth[:, None] + rng.normal(0, s, (3, 2, 1, 16, 16)),
                       "zero_filled": truth + rng.normal(0, 1.0, truth.shape),
                       "residual_ratio": np.full((3, 2), 1.1)} for R, s in ((8, 0.2), (4, 0.1))}
    recon["crop"] = recon["R4"]
    rows = quality_rows(truth, recon)
    assert [r["R"] for r in rows] == [8.0, 4.0]  # the crop is not an acceleration
    df = write_mri_table(rows, str(tmp_path / "mri.csv"), str(tmp_path / "mri.md"), "mri", {"rule": "test"})
    assert list(df["R"]) == [4.0, 8.0]
    back = pd.read_csv(tmp_path / "mri.csv")
    assert (back["psnr_posterior_mean"] > back["psnr_zero_filled"]).all()
    np.testing.assert_allclose(back["psnr_gain"], back["psnr_posterior_mean"] - back["psnr_zero_filled"])
    np.testing.assert_allclose(back["residual_ratio"], 1.1)
    assert "| 4 | 3 | 2 |" in (tmp_path / "mri.md").read_text()


def test_mri_settings_errors():
    exp = {"observation": {"operator": "fourier_lines"}, "variants": {"v": {}}}
    ok = {"experiments": {"e": exp}, "mri": {"experiment": "e", "variant": "v", "heldout": {}, "crop": 8}}
    assert mri_settings(ok)["accelerations"] == [4, 6, 8, 16, 32]
    with pytest.raises(ConfigError, match=r"^mri.experiment: 'x' is not an experiment"):
        mri_settings({**ok, "mri": {**ok["mri"], "experiment": "x"}})
    with pytest.raises(ConfigError, match=r"^mri.variant: 'w'"):
        mri_settings({**ok, "mri": {**ok["mri"], "variant": "w"}})
    bad = {"experiments": {"e": {**exp, "observation": {"operator": "pixel_mask"}}}, "mri": ok["mri"]}
    with pytest.raises(ConfigError, match=r"not fourier_lines"):
        mri_settings(bad)


def test_samples_per_observation_and_sampled_init(tmp_path, tiny_digits):
    """estep.samples_per_observation = 2: every observation gets 2 independent posterior samples (the
    official fastMRI 'duplicate'), gathered by index whatever the shards; the M-step sees all 2N. And
    init.estimator = sampled fits q_0 by Monte Carlo EM with the E-step's posterior."""
    from emprior.core.artifacts import load_h5, load_torch
    from emprior.core.errors import ArtifactError
    from emprior.core.job import Job
    from emprior.pipeline import em

    variant = {"diem_tweedie": {"method": "diem", "posterior": {"method": "mmps", "covariance": "tweedie",
                                                                 "solver": "cg", "maxiter": 1}}}
    cfg = tiny_digits(tmp_path, variant, dataset={"n": 12}, estep={"steps": 4, "block_size": 8, "shards": 2,
                                                                   "samples_per_observation": 2},
                      init={"iterations": 2, "rank": 4, "estimator": "sampled", "steps": 4, "maxiter": 2})
    d = str(tmp_path)
    em.init_prior(Job(cfg, "digits", "diem_tweedie"), f"{d}/observations.h5", f"{d}/q0.pt")
    q0 = load_torch(f"{d}/q0.pt")
    assert q0["kind"] == "gaussian" and q0["U"].shape == (64, 4) and q0["tau"] > 0
    torch.testing.assert_close(q0["U"].T @ q0["U"], torch.eye(4), atol=1e-5, rtol=0)
    job = Job(cfg, "digits", "diem_tweedie", 1)
    shards = [f"{d}/shard_{j}.h5" for j in range(2)]
    for j, s in enumerate(shards):
        em.estep(job, j, f"{d}/q0.pt", f"{d}/observations.h5", s)
    em.gather(job, f"{d}/posterior.h5", shards)
    post, _ = load_h5(f"{d}/posterior.h5")
    np.testing.assert_array_equal(post["index"], np.repeat(np.arange(12), 2))
    x = post["x"].reshape(12, 2, -1)
    assert np.abs(x[:, 0] - x[:, 1]).max(axis=1).min() > 1e-3  # two different draws per observation
    assert len(post["residual_ratio"]) == 24
    with pytest.raises(ArtifactError, match="must occur estep.samples_per_observation = 2 times"):
        em.gather(job, f"{d}/bad.h5", shards[:1])


def test_mri_figures_are_written(tmp_path):
    """Figs. 6, 12, 13, 14 from a posterior.h5, observations.h5 and prior samples of the layout the rules write."""
    from emprior.core.artifacts import save_h5
    from emprior.core.job import Job
    from emprior.data.observations import corrupt, save_observations
    from emprior.report.mri_figures import figure_paths, write_mri_figures

    rng = np.random.default_rng(2)
    x = rng.uniform(-2, 2, (3, 1, 16, 16)).astype(np.float32)
    obs_cfg = {"operator": "fourier_lines", "options": {"acceleration": 4.0}, "noise_std": 0.01}
    save_observations(tmp_path / "obs.h5", corrupt(x, obs_cfg, 0, "e"), {"rule": "test"})
    data = {"truth": x}
    for tag in ("R4", "R8", "crop"):
        data.update({f"{tag}/zero_filled": x * 0.5, f"{tag}/samples": np.repeat(x[:, None], 2, axis=1)})
    save_h5(tmp_path / "posterior.h5", data, attrs={"tags": ["R4", "R8", "crop"]})
    samples = []
    for k in (0, 1):
        path = tmp_path / "e" / "v" / f"iter_00{k}" / "prior_samples.h5"
        save_h5(path, {"x": x})
        samples.append(str(path))
    cfg = {"seed": 0, "experiments": {"e": {"variants": {"v": {}}}}}
    write_mri_figures(Job(cfg, "e"), str(tmp_path / "posterior.h5"), str(tmp_path / "obs.h5"), "", str(tmp_path),
                      samples)
    for path in figure_paths(tmp_path, "e").values():
        assert path.stat().st_size > 1000

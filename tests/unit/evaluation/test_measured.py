"""Measured-pixel RMSE: noise level for samples that fit y, the prior's misfit for samples that ignore it."""

import math

import numpy as np
import torch

from emprior.data.observations import Observations
from emprior.evaluation.measured import measured_rmse, prior_measured_rmse
from emprior.methods.estep import residual_ratio
from emprior.operators import make_operator


def test_measured_rmse_closed_forms():
    g = torch.Generator().manual_seed(0)
    n, sigma = 400, 0.05
    op = make_operator("pixel_mask", n, (1, 8, 8), sigma, np.random.default_rng(0), deleted=0.75)
    x = torch.randn(n, 1, 8, 8, generator=g)
    y = op.observe(x, generator=g)
    # the truth fits to the noise level: sqrt of a chi^2 mean over ~16 * 400 measured pixels
    got = measured_rmse(op, y, x)
    assert abs(got - sigma) < 4 * sigma / math.sqrt(2 * 0.25 * 64 * n), got
    # an offset c on every pixel: RMSE = sqrt(c^2 + sigma^2) on the measured pixels only
    c = 0.3
    assert abs(measured_rmse(op, y, x + c) - math.sqrt(c**2 + got**2)) < 1e-2
    # the same number as the E-step's residual ratio when every observation has the same m
    box = make_operator("box_mask", n, (1, 8, 8), sigma, np.random.default_rng(1), box=4)
    yb = box.observe(x, generator=g)
    xs = x + 0.2 * torch.randn(x.shape, generator=g)
    assert math.isclose(measured_rmse(box, yb, xs), sigma * float(residual_ratio(box, yb, xs).mean().sqrt()),
                        rel_tol=1e-5)
    # samples independent of y (another draw of the data): ~ sqrt(2 Var x) on the measured pixels
    other = torch.randn(n, 1, 8, 8, generator=g)
    assert abs(measured_rmse(op, y, other) - math.sqrt(2)) < 0.06
    obs = Observations(y=y, index=np.arange(n), op=op, noise_std=sigma, seed=0)
    assert math.isclose(prior_measured_rmse(obs, other[:100].numpy()), measured_rmse(op[np.arange(100)], y[:100],
                                                                                      other[:100]), rel_tol=1e-6)
    assert prior_measured_rmse(obs, np.zeros((5, 3))) is None


def test_audit_lists_the_final_stage_with_the_measured_pixel_fit(tmp_path):
    from emprior.core.artifacts import save_h5, save_json, save_torch
    from emprior.evaluation.audit import audit_rows

    for name, k in (("iter_000", 0), ("iter_001", 1), ("final", 2)):
        d = tmp_path / "exp" / "var" / name
        save_torch(d / "model.pt", {"kind": "denoiser", "w": torch.ones(2)})
        save_h5(d / "prior_samples.h5", {"x": np.zeros((4, 2))})
        rec = {"iteration": k, "quality": {"sinkhorn": 0.5}}
        if k:
            save_h5(d / "posterior.h5", {"x": np.zeros((4, 2))})
            save_h5(d / "posterior" / "shard_0.h5", {"x": np.zeros((4, 2))})
            rec["estep"] = {"residual_ratio_mean": 1.0, "shards": [{"file": "shard_0.h5"}],
                            "measured_rmse": {"posterior": 0.01 * k, "prior_samples": 1.4, "noise_std": 1e-3}}
        save_json(d / "metrics.json", rec)
    df = audit_rows(tmp_path).set_index("iteration")
    assert list(df.index) == [0, 1, 2] and df.loc[2, "stage"] == "final" and (df["flags"] == "ok").all()
    assert df.loc[1, "measured_rmse"] == 0.01 and df.loc[2, "measured_rmse"] == 0.02
    assert df.loc[2, "measured_rmse_prior"] == 1.4

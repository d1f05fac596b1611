"""Extending the suite from outside the package: this file alone registers a posterior sampler and two
EM methods (config key ``plugins`` names it) and runs them through the tiny DAG.

- ``toy_data_consistency``: E[x | x_t, y] estimated as the prior's x_hat with its measured part
  replaced by y: x_hat + w A^T (y - A x_hat) (for a pixel mask A A^T = I, so w = 1 makes A x = y).
- ``toy_em``: q_0 = N(0, s^2 I) as a Gaussian checkpoint, E-step with any registered sampler
  (here the one above), the DSM M-step of DiEM.
- ``toy_ambient``: no init and no E-step: the M-step trains on the observations themselves.
"""

import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml

from emprior.core.registry import option
from emprior.methods import EM_METHODS, EMMethod
from emprior.methods.stages import denoiser_mstep
from emprior.posterior import POSTERIOR_SAMPLERS, PosteriorDenoiser, make_posterior

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DataConsistencyOptions:
    weight: float = option(1.0, minimum=0, maximum=1, doc="w: 1 replaces the measured part of x_hat by y")


@POSTERIOR_SAMPLERS.register("toy_data_consistency", DataConsistencyOptions)
class DataConsistency(PosteriorDenoiser):
    """x_hat + w A^T (y - A x_hat): the prior's denoiser made to agree with the measurements."""

    def __init__(self, denoiser, op, y, options: DataConsistencyOptions = DataConsistencyOptions()):
        super().__init__(denoiser, op, y)
        self.weight = options.weight

    def _estimate(self, x_t, sigma, y):
        x_hat = self.denoiser(x_t, sigma)
        return (x_hat + self.weight * self.op.At(y - self.op.A(x_hat))).detach()


@dataclass(frozen=True)
class ToyEMOptions:
    posterior: dict = option({"method": "toy_data_consistency"})
    scale: float = option(1.0, exclusiveMinimum=0, doc="s of q_0 = N(0, s^2 I)")


@EM_METHODS.register("toy_em", ToyEMOptions)
class ToyEM(EMMethod):
    """q_0 = N(0, s^2 I); E-step with a registered posterior sampler; DSM M-step."""

    stages = ("init", "estep", "mstep")

    def init_prior(self, job, obs, clean=None):
        d = int(np.prod(obs.x_shape))
        return ({"kind": "gaussian", "x_shape": list(obs.x_shape), "mean": torch.zeros(d), "U": torch.eye(d, 1),
                 "s": torch.zeros(1), "tau": float(self.options.scale) ** 2, "log_evidence": []}, {})

    def posterior(self, prior, op, y):
        spec = dict(self.options.posterior)
        return make_posterior(spec.pop("method"), prior.denoiser, op, y, **spec)

    def mstep(self, job, data, previous, obs, resume_path):
        return denoiser_mstep(job, data, previous, resume_path)


@EM_METHODS.register("toy_ambient")
class ToyAmbient(EMMethod):
    """Trains on the observations y themselves (zeros at deleted pixels): no q_0, no E-step."""

    stages = ("mstep",)

    def mstep(self, job, data, previous, obs, resume_path):
        return denoiser_mstep(job, data, previous, resume_path)


def test_plugins_are_registered_with_their_options():
    assert POSTERIOR_SAMPLERS.options("toy_data_consistency", {"weight": 0.5}).weight == 0.5
    from emprior.core.errors import ConfigError

    with pytest.raises(ConfigError, match="wieght.*allowed: weight"):
        POSTERIOR_SAMPLERS.options("toy_data_consistency", {"wieght": 0.5}, where="posterior")


def test_data_consistency_matches_the_measurements_on_a_mask():
    from emprior.operators import make_operator

    op = make_operator("pixel_mask", 3, (1, 4, 4), 0.01, np.random.default_rng(0), deleted=0.5)
    y = torch.randn(3, 1, 4, 4) * op.measured(torch.zeros(3, 1, 4, 4))
    post = make_posterior("toy_data_consistency", lambda x, s: 0.5 * x, op, y)
    x_t = torch.randn(3, 1, 4, 4)
    out = post(x_t, 1.0)
    torch.testing.assert_close(op.A(out), y)
    torch.testing.assert_close(out - op.At(op.A(out)), 0.5 * x_t - op.At(op.A(0.5 * x_t)))


@pytest.mark.slow
def test_toy_sampler_and_methods_run_through_the_tiny_dag(tmp_path):
    tiny = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    digits = tiny["experiments"]["digits"]
    digits["variants"] = {"toy": {"method": "toy_em", "scale": 2.0,
                                  "posterior": {"method": "toy_data_consistency", "weight": 1.0}},
                          "ambient": {"method": "toy_ambient"}}
    digits["iterations"] = 2
    cfg = {"seed": 0, "results": "results", "torch_threads": 1, "plugins": [str(Path(__file__).resolve())],
           "experiments": {"digits": digits}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    snake = [sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
             str(tmp_path / "config.yaml"), "-d", str(tmp_path)]
    plan = subprocess.run(snake + ["-n", "all"], capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0, plan.stderr[-3000:]
    counts = dict(re.findall(r"^(\w+)\s+(\d+)$", plan.stdout + plan.stderr, flags=re.M))
    # toy: init + 2 x (2 shards + gather + mstep); ambient: 2 M-steps and no E-step jobs
    assert counts["init_prior"] == "1" and counts["estep_shard"] == "4" and counts["gather_posterior"] == "2"
    assert counts["mstep"] == "4" and counts["iteration_metrics"] == "5" and counts["prior_samples"] == "5"
    assert "estep_check" not in counts  # only methods that declare it (a Gaussian q_0 with an exact posterior)
    run = subprocess.run(snake + ["-c", "2", "all"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    res = tmp_path / "results" / "digits"
    obs = h5py.File(res / "data" / "observations.h5", "r")
    y = obs["y"][()]
    with h5py.File(res / "toy" / "iter_001" / "posterior.h5", "r") as f:
        x = f["x"][()]
    measured = y != 0
    assert measured.mean() > 0.15  # 75 % deleted
    np.testing.assert_allclose(x[measured], y[measured], atol=1e-5)  # w = 1: A x = y exactly
    for var, ks in (("toy", range(3)), ("ambient", range(1, 3))):
        for k in ks:
            d = res / var / f"iter_{k:03d}"
            for name in ("model.pt", "prior_samples.h5", "metrics.json"):
                assert (d / name).exists() and (d / f"{name}.prov.json").exists(), d / name
            m = json.loads((d / "metrics.json").read_text())
            assert m["variant"] == var and m["iteration"] == k and m["quality"]["sinkhorn"] is not None
            assert ("estep" in m) == (var == "toy" and k > 0)
    assert not (res / "ambient" / "iter_000").exists() and not (res / "ambient" / "iter_001" / "posterior").exists()
    audit = subprocess.run([sys.executable, "-m", "emprior", "audit", str(tmp_path / "results")],
                           capture_output=True, text=True, timeout=120)
    assert audit.returncode in (0, 1), audit.stderr
    rows = [line for line in audit.stdout.splitlines() if line.strip().startswith("digits")]
    assert len(rows) == 5, audit.stdout

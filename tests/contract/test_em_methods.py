"""Contract of every registered EM method: on the tiny digits config, one EM iteration through the
pipeline functions (the rules' own code) writes the per-iteration artifacts its stages promise."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from emprior.config.loading import validate_config
from emprior.core.artifacts import load_h5, load_torch, verify
from emprior.core.job import Job
from emprior.methods import EM_METHODS, make_method
from emprior.pipeline import data, em, evaluate

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg["experiments"] = {"digits": cfg["experiments"]["digits"]}
    for key in ("fig2", "tables"):
        cfg.pop(key, None)
    d = tmp_path_factory.mktemp("digits")
    data.dataset(Job(cfg, "digits"), str(d / "clean.h5"))
    data.observe(Job(cfg, "digits"), str(d / "clean.h5"), str(d / "observations.h5"))
    return cfg, d


# The methods' defaults, except EMDiffusion's 1000-step reference chain (this test checks the artifacts a
# method writes, not its chain; tests/unit/methods/test_emdiffusion.py checks the chain step for step).
SHORTER = {"emdiffusion": {"steps": 20}}


@pytest.mark.parametrize("name", EM_METHODS.names())
def test_method_writes_its_iteration_artifacts(name, digits, tmp_path):
    base, d = digits
    cfg = copy.deepcopy(base)
    variant = {"method": name, **SHORTER.get(name, {})}
    cfg["experiments"]["digits"]["variants"] = {"v": variant}
    validate_config(cfg)
    method = make_method(variant, cfg["experiments"]["digits"])
    assert set(method.stages) <= {"init", "estep", "mstep"} and "mstep" in method.stages
    obs, clean = str(d / "observations.h5"), str(d / "clean.h5")
    it0, it1 = tmp_path / "iter_000", tmp_path / "iter_001"
    previous = None
    if "init" in method.stages:
        em.init_prior(Job(cfg, "digits", "v"), obs, str(it0 / "model.pt"),
                      clean=clean if method.init_needs_clean else None)
        evaluate.prior_samples(Job(cfg, "digits", "v", 0), str(it0 / "model.pt"), str(it0 / "prior_samples.h5"))
        assert load_torch(it0 / "model.pt")["kind"] in ("gaussian", "denoiser")
        previous = str(it0 / "model.pt")
    job = Job(cfg, "digits", "v", 1)
    posterior = None
    if "estep" in method.stages:
        assert previous is not None, "an E-step samples q_{k-1}: it needs the init stage"
        shards = [str(it1 / "posterior" / f"shard_{j}.h5") for j in range(2)]
        for j, out in enumerate(shards):
            em.estep(job, j, previous, obs, out)
        posterior = str(it1 / "posterior.h5")
        em.gather(job, posterior, shards)
        x = load_h5(posterior)[0]["x"]
        assert x.shape == load_h5(clean)[0]["x"].shape and np.isfinite(x).all()
    em.mstep(job, str(it1 / "model.pt"), posterior=posterior, observations=None if posterior else obs,
             previous=previous if method.uses_previous(1) else None)
    evaluate.prior_samples(job, str(it1 / "model.pt"), str(it1 / "prior_samples.h5"))
    evaluate.metrics(job, str(it1 / "model.pt"), str(it1 / "prior_samples.h5"), clean, obs, str(it1 / "metrics.json"),
                     posterior=posterior)
    for f in ("model.pt", "prior_samples.h5", "metrics.json"):
        assert verify(it1 / f)["sha256"]
    m = json.loads((it1 / "metrics.json").read_text())
    assert m["iteration"] == 1 and m["quality"]["sinkhorn"] is not None and ("estep" in m) == (posterior is not None)
    assert load_h5(it1 / "prior_samples.h5")[0]["x"].shape[1:] == load_h5(clean)[0]["x"].shape[1:]
    if posterior:  # the audit's measured-pixel fit, beside what ignoring y scores
        rmse = m["estep"]["measured_rmse"]
        assert rmse["posterior"] >= 0 and rmse["prior_samples"] > 0 and rmse["noise_std"] > 0
    if method.final_stage:  # rules/diffem.smk: the last model draws again, a final model learns from that
        from emprior.pipeline import final

        fin, job2 = tmp_path / "final", Job(cfg, "digits", "v", 2)
        shards = [str(fin / "posterior" / f"shard_{j}.h5") for j in range(2)]
        for j, out in enumerate(shards):
            em.estep(job2, j, str(it1 / "model.pt"), obs, out)
        em.gather(job2, str(fin / "posterior.h5"), shards)
        final.final_model(job2, str(fin / "posterior.h5"), str(it1 / "model.pt"), str(fin / "model.pt"))
        evaluate.prior_samples(job2, str(fin / "model.pt"), str(fin / "prior_samples.h5"))
        evaluate.metrics(job2, str(fin / "model.pt"), str(fin / "prior_samples.h5"), clean, obs,
                         str(fin / "metrics.json"), posterior=str(fin / "posterior.h5"))
        mf = json.loads((fin / "metrics.json").read_text())
        assert mf["stage"] == "final" and mf["em_iterations"] == 1 and mf["quality"]["sinkhorn"] is not None
        assert mf["final_source"]["model_sha256"] == verify(it1 / "model.pt")["sha256"]

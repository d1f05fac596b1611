"""EMDiffusion plug-in: the seeded clean subset q_0 is trained on, the per-stage DPS guidance, the
E-step's subset of observations and the checks of its options."""

import copy
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import yaml

from emprior.core.artifacts import load_h5, load_torch
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.data.observations import load_clean, load_observations
from emprior.methods import emdiffusion, make_method
from emprior.methods.emdiffusion import EMDiffusion
from emprior.operators import make_operator
from emprior.pipeline import data, em
from emprior.posterior.dps import DPS
from emprior.priors.checkpoint import load_prior

REPO = Path(__file__).resolve().parents[3]


def tiny_cfg(**variant):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg["experiments"] = {"digits": cfg["experiments"]["digits"]}
    for key in ("fig2", "tables"):
        cfg.pop(key, None)
    cfg["experiments"]["digits"]["variants"] = {"v": {"method": "emdiffusion", **variant}}
    return cfg


def method_of(cfg, variant="v"):
    exp = cfg["experiments"]["digits"]
    return make_method(exp["variants"][variant], exp, where=f"experiments.digits.variants.{variant}")


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    cfg = tiny_cfg()
    d = tmp_path_factory.mktemp("emd")
    data.dataset(Job(cfg, "digits"), str(d / "clean.h5"))
    data.observe(Job(cfg, "digits"), str(d / "clean.h5"), str(d / "observations.h5"))
    return d


# -- (1) the clean subset ----------------------------------------------------------------------------
def test_clean_subset_is_drawn_by_seed_without_replacement():
    cfg = tiny_cfg(clean_subset=20)
    m = method_of(cfg)
    idx = m.clean_indices(Job(cfg, "digits", "v"), 128)
    assert len(idx) == 20 and len(np.unique(idx)) == 20
    assert idx.min() >= 0 and idx.max() < 128 and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, method_of(cfg).clean_indices(Job(copy.deepcopy(cfg), "digits", "v"), 128))
    other = copy.deepcopy(cfg)
    other["seed"] = 1
    assert not np.array_equal(idx, m.clean_indices(Job(other, "digits", "v"), 128))
    # the subset does not depend on which iteration asks
    np.testing.assert_array_equal(idx, m.clean_indices(Job(cfg, "digits", "v", 0), 128))
    assert m.clean_data() == 20
    big = EMDiffusion(emdiffusion.EMDiffusionOptions(clean_subset=200), cfg["experiments"]["digits"])
    with pytest.raises(ConfigError, match="clean_subset: 200 exceeds the 128 clean images"):
        big.clean_indices(Job(cfg, "digits", "v"), 128)
    with pytest.raises(ConfigError, match=r"^experiments\.digits\.variants\.v\.clean_subset: 129 exceeds"):
        method_of(tiny_cfg(clean_subset=129))  # the tiny dataset has n = 128


def test_init_trains_only_on_the_clean_subset_and_records_it(digits, tmp_path, monkeypatch):
    cfg = tiny_cfg(clean_subset=20, init_steps=7)
    seen = {}
    real = emdiffusion.denoiser_mstep

    def spy(job, x, previous, resume_path, **kw):
        seen["x"], seen["previous"], seen["mstep"] = x.clone(), previous, kw.get("mstep_cfg")
        return real(job, x, previous, resume_path, **kw)

    monkeypatch.setattr(emdiffusion, "denoiser_mstep", spy)
    out = tmp_path / "iter_000" / "model.pt"
    em.init_prior(Job(cfg, "digits", "v"), str(digits / "observations.h5"), str(out),
                  clean=str(digits / "clean.h5"))
    ckpt = load_torch(out)
    idx = method_of(cfg).clean_indices(Job(cfg, "digits", "v"), 128)
    assert ckpt["kind"] == "denoiser" and ckpt["clean_subset"] == [int(i) for i in idx]
    clean = load_clean(str(digits / "clean.h5"))
    np.testing.assert_array_equal(seen["x"].numpy(), clean[idx])  # exactly those 20 images, nothing else
    assert seen["previous"] is None and seen["mstep"]["steps"] == 7 and ckpt["train"]["steps"] == 7
    assert ckpt["train"]["n_data"] == 20
    prior = load_prior(out)  # a normal denoiser checkpoint
    assert prior.kind == "denoiser" and tuple(prior.x_shape) == (1, 8, 8)


def test_init_steps_default_to_the_experiment_mstep_budget():
    cfg = tiny_cfg()
    assert method_of(cfg).init_mstep_cfg() == cfg["experiments"]["digits"]["mstep"]
    paper_like = copy.deepcopy(cfg["experiments"]["digits"])
    paper_like["mstep"] = {**{k: v for k, v in paper_like["mstep"].items() if k != "steps"}, "epochs": 3}
    m = EMDiffusion(emdiffusion.EMDiffusionOptions(init_steps=11), paper_like)
    assert m.init_mstep_cfg()["steps"] == 11 and "epochs" not in m.init_mstep_cfg()


def test_init_needs_the_clean_data(digits, tmp_path):
    from emprior.core.errors import ArtifactError

    with pytest.raises(ArtifactError, match="needs --clean"):
        em.init_prior(Job(tiny_cfg(), "digits", "v"), str(digits / "observations.h5"), str(tmp_path / "m.pt"))


# -- (2) the guidance schedule -----------------------------------------------------------------------
def linear_prior():
    return SimpleNamespace(denoiser=lambda x, s: 0.5 * x)


def test_posterior_of_stage_k_uses_the_scheduled_zeta():
    cfg = tiny_cfg(guidance=[30.0, 20.0, 10.0])
    m = method_of(cfg)
    op = make_operator("pixel_mask", 4, (1, 8, 8), 1e-3, np.random.default_rng(0), deleted=0.75)
    y = torch.randn(4, 1, 8, 8) * op.measured(torch.zeros(4, 1, 8, 8))
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    corrections = {}
    for k, want in [(1, 30.0), (2, 20.0), (3, 10.0), (4, 10.0), (9, 10.0)]:
        assert m.guidance_at(k) == want
        assert m.estep_subset(Job(cfg, "digits", "v", k), 4) is None
        post = m.posterior(linear_prior(), op, y)
        assert isinstance(post, DPS) and post.zeta == want and post.stats["zeta"] == want
        corrections[k] = post(x_t, 0.5) - 0.5 * x_t
    # the DPS correction is linear in zeta: stage 1 pushes 3x as hard as stage 3
    assert corrections[1].abs().max() > 1e-3
    torch.testing.assert_close(corrections[1], 3.0 * corrections[3])
    with pytest.raises(ValueError, match="iterations >= 1"):
        m.guidance_at(0)


def test_default_schedule_decreases_and_posterior_needs_the_stage():
    m = method_of(tiny_cfg())
    g = [m.guidance_at(k) for k in (1, 2, 3, 4)]
    assert g == [100.0, 50.0, 25.0, 25.0]
    with pytest.raises(RuntimeError, match="estep_subset"):
        m.posterior(linear_prior(), None, torch.zeros(1, 1, 8, 8))


def test_scale_translation_matches_the_documented_numbers():
    assert 800 < emdiffusion.vp_scale_to_zeta(7.0, steps=48) < 900
    assert 650 < emdiffusion.vp_scale_to_zeta(7.0, steps=256) < 750
    # linear in the scale
    assert emdiffusion.vp_scale_to_zeta(14.0) == pytest.approx(2 * emdiffusion.vp_scale_to_zeta(7.0))


# -- (3) the E-step's subset of observations ---------------------------------------------------------
def test_estep_fraction_draws_a_seeded_subset_per_iteration():
    cfg = tiny_cfg(estep_fraction=0.25)
    m = method_of(cfg)
    s1 = m.estep_subset(Job(cfg, "digits", "v", 1), 128)
    assert len(s1) == 32 and len(np.unique(s1)) == 32 and np.all(np.diff(s1) > 0)
    assert s1.min() >= 0 and s1.max() < 128
    np.testing.assert_array_equal(s1, method_of(cfg).estep_subset(Job(cfg, "digits", "v", 1), 128))
    s2 = m.estep_subset(Job(cfg, "digits", "v", 2), 128)
    assert len(s2) == 32 and not np.array_equal(s1, s2)
    other = copy.deepcopy(cfg)
    other["seed"] = 1
    assert not np.array_equal(s1, m.estep_subset(Job(other, "digits", "v", 1), 128))
    assert len(m.estep_subset(Job(cfg, "digits", "v", 1), 10)) == 2  # round(2.5) = 2
    assert len(m.estep_subset(Job(cfg, "digits", "v", 1), 1)) == 1  # never empty
    assert method_of(tiny_cfg()).estep_subset(Job(cfg, "digits", "v", 1), 128) is None
    assert m.uses_previous(1) and m.uses_previous(2)


def test_estep_through_the_pipeline_records_its_stage(digits, tmp_path):
    """Iteration 2's E-step shard: DPS with guidance[1], on the iteration's subset, recorded in the shard."""
    cfg = tiny_cfg(clean_subset=20, init_steps=3, guidance=[40.0, 8.0], estep_fraction=0.75)
    obs = str(digits / "observations.h5")
    model = tmp_path / "model.pt"
    em.init_prior(Job(cfg, "digits", "v"), obs, str(model), clean=str(digits / "clean.h5"))
    job = Job(cfg, "digits", "v", 2)
    em.estep(job, 0, str(model), obs, str(tmp_path / "shard_0.h5"))
    x, attrs = load_h5(str(tmp_path / "shard_0.h5"))
    want = method_of(cfg).estep_subset(job, len(load_observations(obs)))
    assert len(want) == 96  # two blocks of 64: shard 0 of 2 samples the first
    np.testing.assert_array_equal(x["index"], want[:64])
    assert attrs["solver"]["zeta"] == 8.0 and attrs["iteration"] == 2
    assert np.isfinite(x["x"]).all()


# -- (4) bad options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, key", [([], "guidance"), ([10.0, -1.0], r"guidance\[1\]"),
                                      ([0.0], r"guidance\[0\]"), ([float("inf")], r"guidance\[0\]")])
def test_a_bad_schedule_is_a_one_line_config_error(bad, key):
    with pytest.raises(ConfigError) as err:
        method_of(tiny_cfg(guidance=bad))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("experiments.digits.variants.v.") and re.search(key, msg)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_estep_fraction_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="estep_fraction") as err:
        method_of(tiny_cfg(estep_fraction=bad))
    assert "\n" not in str(err.value)

"""EMDiffusion plug-in: the seeded clean subset q_0 is trained on, the reference's DPS E-step (against an
independent VP implementation, step for step), the stored reconstructions and EMA continuation of the
M-step, the E-step's subset of observations and the checks of its options."""

import copy
import math
import json
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
from emprior.diffusion.samplers import _ddpm_update, sample
from emprior.diffusion.vp_chain import VPChain, space_timesteps
from emprior.posterior import make_posterior
from emprior.posterior.dps_vp import DPSVP
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


def test_clean_fraction_sets_the_subset_size_and_table1_counts_it():
    # the paper's 50 of 50 000 (0.1 %): 1 of the tiny set's 128, never 0
    assert method_of(tiny_cfg()).clean_data() == 1
    m = method_of(tiny_cfg(clean_fraction=0.1))
    assert m.clean_data() == 13 and len(m.clean_indices(Job(tiny_cfg(clean_fraction=0.1), "digits", "v"), 128)) == 13
    assert method_of(tiny_cfg(clean_fraction=0.1, clean_subset=5)).clean_data() == 5  # a count wins
    exp = tiny_cfg()["experiments"]["digits"]
    exp["dataset"] = {"name": "cifar10", "root": "x"}  # no n to take a fraction of
    with pytest.raises(ConfigError, match=r"^v\.clean_fraction: the dataset has no n"):
        make_method({"method": "emdiffusion"}, exp, where="v")
    assert make_method({"method": "emdiffusion", "clean_subset": 50}, exp, where="v").clean_data() == 50


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


# -- (2) the E-step: the reference's DPS on its VP chain ---------------------------------------------
def linear_prior():
    return SimpleNamespace(denoiser=lambda x, s: 0.5 * x)


def test_posterior_of_stage_k_uses_the_scheduled_scale():
    cfg = tiny_cfg(guidance=[30.0, 20.0, 10.0], batch=None)
    m = method_of(cfg)
    op = make_operator("pixel_mask", 4, (1, 8, 8), 1e-3, np.random.default_rng(0), deleted=0.75)
    y = torch.randn(4, 1, 8, 8) * op.measured(torch.zeros(4, 1, 8, 8))
    x_t = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    corrections = {}
    for k, want in [(1, 30.0), (2, 20.0), (3, 10.0), (4, 10.0), (9, 10.0)]:
        assert m.guidance_at(k) == want
        assert m.estep_subset(Job(cfg, "digits", "v", k), 4) is None
        post = m.posterior(linear_prior(), op, y)
        assert isinstance(post, DPSVP) and post.scale == want and post.stats["scale"] == want
        corrections[k] = post(x_t, 0.5) - (0.5 * x_t).clamp(-2, 2)
    # the DPS correction is linear in the scale: stage 1 pushes 3x as hard as stage 3
    assert corrections[1].abs().max() > 1e-3
    torch.testing.assert_close(corrections[1], 3.0 * corrections[3])
    with pytest.raises(ValueError, match="iterations >= 1"):
        m.guidance_at(0)


def test_defaults_are_the_reference_and_posterior_needs_the_stage():
    m = method_of(tiny_cfg())
    assert [m.guidance_at(k) for k in (1, 2, 3, 4)] == [20.0, 10.0, 7.0, 7.0]
    o = m.options
    assert (o.steps, o.norm, o.batch, o.clip, o.guidance_per, o.reconstructions, o.continue_from) == \
        (1000, "batch", 250, True, "step", "png", "ema")
    with pytest.raises(RuntimeError, match="estep_subset"):
        m.posterior(linear_prior(), None, torch.zeros(1, 1, 8, 8))
    # the E-step walks the 1000-step chain's levels with the DDPM sampler, whatever the experiment's sampler
    chain, est = method_of(tiny_cfg(steps=50)).estep_chain(None, {"sampler": "pc", "steps": 8, "block_size": 64})
    assert est == {"sampler": "ddpm", "steps": 49, "block_size": 64}
    torch.testing.assert_close(chain.discretize(49), VPChain(1000, 2.0).discretize(49))


def test_vp_chain_levels_and_respacing():
    chain = VPChain(1000, 2.0)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    sig = chain.discretize(999).numpy()
    np.testing.assert_allclose(sig, 2.0 * np.sqrt((1 - abar) / abar)[::-1], rtol=1e-12)
    assert chain.sigma_max == pytest.approx(2.0 / np.sqrt(abar[-1]))  # x_T: N(0, I) in VP
    assert space_timesteps(1000, 10) == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert chain.timesteps(9) == [999, 888, 777, 666, 555, 444, 333, 222, 111, 0]
    assert np.all(np.diff(chain.discretize(9).numpy()) < 0)


B, P, D_SCALE, M, C = 6, 4, 2.0, 1.2, 1.0  # prior N(M, C^2) per pixel on the suite's [-2, 2] scale


def gaussian_denoiser(x, s):
    """E[x | x_t = x, sigma = s] of the prior N(M, C^2 I) (VE)."""
    s = s.reshape(-1, *[1] * (x.dim() - 1))
    return M + C**2 / (C**2 + s**2) * (x - M)


def reference_dps(y, mask, respacing, scale, seed):
    """The reference's E-step written directly in its own terms: VP chain of 1000 linear betas respaced
    to ``respacing``, images on [-1, 1], x_hat clamped, the ancestral (posterior-variance) step, then
    x_{t-1} -= scale grad_{x_t} ||Y - A x_hat||_F over the batch. Returns the states x_T, ..., x_0."""
    abar_all = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    ts = space_timesteps(1000, respacing)
    abar = abar_all[ts]
    prev = np.append(1.0, abar[:-1])
    beta = 1 - abar / prev
    var = beta * (1 - prev) / (1 - abar)
    c1, c2 = beta * np.sqrt(prev) / (1 - abar), (1 - prev) * np.sqrt(1 - beta) / (1 - abar)
    m, c, Y = M / D_SCALE, C / D_SCALE, y / D_SCALE
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, P, generator=gen, dtype=torch.float64)
    states, clipped = [x], 0
    for k in reversed(range(len(ts))):
        x = x.detach().requires_grad_()
        a = abar[k]
        x0 = m + math.sqrt(a) * c**2 / (a * c**2 + 1 - a) * (x - math.sqrt(a) * m)
        clipped += int((x0.abs() > 1).sum())
        x0 = x0.clamp(-1, 1)
        nxt = c1[k] * x0 + c2[k] * x
        if k != 0:
            nxt = nxt + math.sqrt(var[k]) * torch.randn(B, P, generator=gen, dtype=torch.float64)
        grad = torch.autograd.grad(torch.linalg.norm(Y - mask * x0), x)[0]
        x = (nxt - scale * grad).detach()
        states.append(x)
    return states, abar[::-1], clipped


@pytest.mark.parametrize("respacing", [1000, 40])
def test_dps_vp_equals_the_reference_vp_dps_step_for_step(respacing):
    g = torch.Generator().manual_seed(0)
    mask = (torch.rand(B, P, generator=g) < 0.5).double()
    op = SimpleNamespace(A=lambda x: x * mask, At=lambda u: u * mask, noise_std=0.0)
    y = op.A(M + C * torch.randn(B, P, generator=g, dtype=torch.float64))
    states, abar, clipped = reference_dps(y, mask, respacing, 3.0, seed=7)
    assert clipped > 0  # the clamp acts on this prior
    chain = VPChain(1000, D_SCALE)
    sig = chain.discretize(respacing - 1).tolist()
    post = make_posterior("dps_vp", gaussian_denoiser, op, y, scale=3.0, respacing=respacing, batch=None)
    gen = torch.Generator().manual_seed(7)
    x = chain.sigma_max * torch.randn(B, P, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(x, D_SCALE * states[0] / math.sqrt(abar[0]), rtol=0, atol=1e-12)
    for i in range(respacing - 1):  # x^VE = d x^VP / sqrt(abar) after every step
        x = _ddpm_update(x, post(x, torch.full((B,), sig[i], dtype=torch.float64)), sig[i], sig[i + 1], gen)
        torch.testing.assert_close(x, D_SCALE * states[i + 1] / math.sqrt(abar[i + 1]), rtol=1e-9, atol=1e-9)
    x = post(x, torch.full((B,), sig[-1], dtype=torch.float64))  # the last step, t = 0 -> x_0
    torch.testing.assert_close(x, D_SCALE * states[-1], rtol=1e-9, atol=1e-9)
    if respacing == 1000:
        return  # (the same run through sample(): checked once, on the shorter chain, to keep the test fast)
    # the suite's sampler on the chain (its final denoise = the reference's last step)
    gen = torch.Generator().manual_seed(7)
    x_T = chain.sigma_max * torch.randn(B, P, generator=gen, dtype=torch.float64)
    out = sample(post, x_T, chain, respacing - 1, "ddpm", generator=gen)
    torch.testing.assert_close(out, D_SCALE * states[-1], rtol=1e-9, atol=1e-9)


def test_clip_applies_to_x_hat_and_its_gradient():
    op = SimpleNamespace(A=lambda x: x, At=lambda u: u, noise_std=0.0)
    x_t = torch.tensor([[0.5, 1.5, -3.0, 0.1]], dtype=torch.float64)
    y = torch.zeros(1, 4, dtype=torch.float64)
    den = lambda x, s: 2.0 * x  # noqa: E731  x_hat = (1, 3, -6, 0.2): two entries outside [-2, 2]
    s = torch.tensor([1.0], dtype=torch.float64)
    free = make_posterior("dps_vp", den, op, y, scale=0.0)(x_t, s)
    torch.testing.assert_close(free, torch.tensor([[1.0, 2.0, -2.0, 0.2]], dtype=torch.float64))
    post = make_posterior("dps_vp", den, op, y, scale=1.0)
    moved = post(x_t, s) - free
    assert moved[0, 0] < 0 and moved[0, 3] < 0  # pulled towards y = 0 inside the range
    assert moved[0, 1] == 0 and moved[0, 2] == 0  # the clamp's gradient is zero outside it
    # the same move unclipped: every entry moves, and x_hat leaves the range
    raw = make_posterior("dps_vp", den, op, y, scale=0.0, clip=False)(x_t, s)
    assert raw.abs().max() == 6.0 and (make_posterior("dps_vp", den, op, y, scale=1.0, clip=False)(x_t, s) - raw
                                       ).ne(0).all()


def test_batch_norm_couples_the_samples_of_a_batch():
    op = SimpleNamespace(A=lambda x: x, At=lambda u: u, noise_std=0.0)
    x_t = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    den = lambda x, s: 0.5 * x  # noqa: E731
    s = torch.full((4,), 0.7, dtype=torch.float64)
    y = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y2 = y.clone()
    y2[3] *= 10.0  # only sample 3's observation changes
    r = y - 0.5 * x_t
    r2 = y2 - 0.5 * x_t

    def moves(yy, **kw):
        return make_posterior("dps_vp", den, op, yy, scale=1.0, **kw)(x_t, s) - 0.5 * x_t

    # batch of all 4: sample 0's move is r_0 / ||R||_F, so it shrinks by ||R|| / ||R'||
    a, b = moves(y, batch=None), moves(y2, batch=None)
    torch.testing.assert_close(b[0], a[0] * r.norm() / r2.norm())
    torch.testing.assert_close(a[0] / a[1], (r[0] / r[1]))  # same factor for every sample of the batch
    # batches of 2: sample 3 shares a norm with sample 2 only
    a, b = moves(y, batch=2), moves(y2, batch=2)
    torch.testing.assert_close(a[:2], b[:2])
    torch.testing.assert_close(b[2], a[2] * r[2:].norm() / r2[2:].norm())
    # per-sample norm (DPS's Algorithm 1): nobody else moves differently
    a, b = moves(y, norm="sample"), moves(y2, norm="sample")
    torch.testing.assert_close(a[:3], b[:3])
    torch.testing.assert_close(a[3].norm(), b[3].norm())  # its own unit residual: the same length


def test_guidance_per_vp_step_multiplies_by_the_steps_a_respaced_step_spans():
    op = SimpleNamespace(A=lambda x: x, At=lambda u: u, noise_std=0.0)
    x_t = torch.randn(2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.zeros(2, 3, dtype=torch.float64)
    den = lambda x, s: 0.5 * x  # noqa: E731
    chain = VPChain(1000, 2.0)
    sig = chain.discretize(9)  # timesteps 999, 888, ..., 111, 0
    for i, span in [(0, 111), (8, 111), (9, 1)]:
        s = torch.full((2,), float(sig[i]), dtype=torch.float64)
        per_step = make_posterior("dps_vp", den, op, y, respacing=10)(x_t, s) - 0.5 * x_t
        per_vp = make_posterior("dps_vp", den, op, y, respacing=10, guidance_per="vp_step")(x_t, s) - 0.5 * x_t
        torch.testing.assert_close(per_vp, span * per_step)


# -- (2b) the M-step: stored reconstructions, continued from the EMA weights ------------------------
def test_reconstructions_are_stored_as_the_reference_stores_them():
    x = torch.tensor([[[-0.5, 0.0], [1.0, 2.5]], [[3.0, 3.0], [3.0, 3.0]]]).reshape(2, 1, 2, 2)
    png = emdiffusion.stored_reconstructions(x, "png", 2.0)
    # per-image min-max to [0, 1], floor to 8 bits, then [-2, 2]: the extremes land on -2 and 2
    want = 2.0 * (2.0 * torch.floor(torch.tensor([0.0, 0.5 / 3, 1.5 / 3, 1.0]) * 255) / 255 - 1.0)
    torch.testing.assert_close(png[0].reshape(-1), want)
    assert torch.all(png[1] == png[1].reshape(-1)[0])  # a constant image: one mid-range value, no NaN
    torch.testing.assert_close(emdiffusion.stored_reconstructions(x, "clip", 2.0), x.clamp(-2, 2))
    assert emdiffusion.stored_reconstructions(x, "raw", 2.0) is x


@pytest.mark.parametrize("continue_from, key", [("ema", "weights"), ("raw", "raw_weights")])
def test_mstep_continues_from_the_previous_ema_weights(monkeypatch, continue_from, key):
    seen = {}
    monkeypatch.setattr(emdiffusion, "denoiser_mstep",
                        lambda job, data, previous, resume: seen.update(data=data, previous=previous) or ({}, {}))
    m = method_of(tiny_cfg(continue_from=continue_from))
    prev = SimpleNamespace(kind="denoiser", checkpoint={"weights": {"w": 1}, "raw_weights": {"w": 2}, "x": 3})
    x = 3.0 * torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    m.mstep(None, x, prev, None, "r")
    assert seen["previous"].checkpoint["raw_weights"] == prev.checkpoint[key]
    assert seen["previous"].checkpoint["x"] == 3 and prev.checkpoint["raw_weights"] == {"w": 2}  # not mutated
    assert seen["data"].abs().max() == 2.0  # the png-stored samples: each image spans [-2, 2]


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
    """Iteration 2's E-step shard: DPS with guidance[1] on the respaced chain, on the iteration's subset."""
    cfg = tiny_cfg(clean_subset=20, init_steps=3, guidance=[40.0, 8.0], estep_fraction=0.75, steps=12)
    obs = str(digits / "observations.h5")
    model = tmp_path / "model.pt"
    em.init_prior(Job(cfg, "digits", "v"), obs, str(model), clean=str(digits / "clean.h5"))
    # q_0 stands in for iteration 1's model (a job checks the iteration its --model was made for)
    side = model.with_name("model.pt.prov.json")
    rec = json.loads(side.read_text())
    rec["provenance"]["iteration"] = 1
    side.write_text(json.dumps(rec))
    job = Job(cfg, "digits", "v", 2)
    em.estep(job, 0, str(model), obs, str(tmp_path / "shard_0.h5"))
    x, attrs = load_h5(str(tmp_path / "shard_0.h5"))
    want = method_of(cfg).estep_subset(job, len(load_observations(obs)))
    assert len(want) == 96  # two blocks of 64: shard 0 of 2 samples the first
    np.testing.assert_array_equal(x["index"], want[:64])
    assert attrs["solver"]["scale"] == 8.0 and attrs["iteration"] == 2
    assert np.isfinite(x["x"]).all()
    assert attrs["solver"]["calls"] == 12  # 11 DDPM bridges of the respaced chain and the last step


# -- (4) bad options ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, key", [([], "guidance"), ([10.0, -1.0], r"guidance\[1\]"),
                                      ([0.0], r"guidance\[0\]"), ([float("inf")], r"guidance\[0\]")])
def test_a_bad_schedule_is_a_one_line_config_error(bad, key):
    with pytest.raises(ConfigError) as err:
        method_of(tiny_cfg(guidance=bad))
    msg = str(err.value)
    assert "\n" not in msg
    assert msg.startswith("experiments.digits.variants.v.") and re.search(key, msg)


@pytest.mark.parametrize("key, bad", [("steps", 1), ("steps", 1001), ("clean_fraction", 0.0), ("clean_fraction", 2.0),
                                      ("norm", "frobenius"), ("reconstructions", "jpeg"), ("continue_from", "best")])
def test_a_bad_option_is_a_one_line_config_error(key, bad):
    with pytest.raises(ConfigError, match=rf"experiments\.digits\.variants\.v\.{key}") as err:
        method_of(tiny_cfg(**{key: bad}))
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("bad", [0.0, 1.5, -0.1])
def test_estep_fraction_out_of_range_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="estep_fraction") as err:
        method_of(tiny_cfg(estep_fraction=bad))
    assert "\n" not in str(err.value)

"""DiffEM: the conditional denoiser sees y, the M-step's pairs carry fresh corruptions from the
observation model, iteration 1 samples with MMPS on q_0 and later ones with the conditional model,
and model.pt round-trips with the conditional weights."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from emprior.config.loading import validate_config
from emprior.core.artifacts import load_h5, save_torch
from emprior.core.job import Job
from emprior.core.rng import numpy_rng
from emprior.methods import diffem as diffem_module
from emprior.methods import make_method
from emprior.methods.diffem import ConditionalPosterior, DiffEM, condition, recorrupt
from emprior.methods.estep import run_estep
from emprior.nets.conditional import build_conditional_denoiser
from emprior.operators import BoxMaskOperator, PixelMaskOperator, make_operator
from emprior.pipeline import em as em_rules
from emprior.posterior.mmps import MMPS
from emprior.priors.checkpoint import load_prior

REPO = Path(__file__).resolve().parents[3]
NET = {"net": "unet", "hid_channels": [8, 16], "hid_blocks": [1, 1], "attention_heads": [0, 2], "dropout": 0.0,
       "emb_features": 16}
PIXEL = {"operator": "pixel_mask", "options": {"deleted": 0.75}, "noise_std": 1.0e-3}


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_digits):
    """Tiny digits with a DiffEM variant (4 M-step steps), its data, observations and q_0."""
    d = tmp_path_factory.mktemp("diffem")
    cfg = tiny_digits(d, {"d": {"method": "diffem"}}, mstep={"steps": 4}, estep={"steps": 4})
    em_rules.init_prior(Job(cfg, "digits", "d"), str(d / "observations.h5"), str(d / "iter_000.pt"))
    x = torch.as_tensor(load_h5(d / "clean.h5")[0]["x"], dtype=torch.float32)
    return cfg, d, x


def _method(cfg, **options):
    return make_method({"method": "diffem", **options}, cfg["experiments"]["digits"])


def _mstep(cfg, d, x, iteration, previous=None, name="model"):
    method = _method(cfg)
    job = Job(cfg, "digits", "d", iteration)
    out = d / f"{name}_{iteration}.pt"
    ckpt, _ = method.mstep(job, x, previous, None, str(out) + ".resume.pt")
    save_torch(out, ckpt)
    return out, ckpt


# -- (1) the conditional input -------------------------------------------------------------------
def test_conditional_denoiser_depends_on_y_and_takes_a_zero_y():
    torch.manual_seed(0)
    net = build_conditional_denoiser(NET, (1, 8, 8), 1)
    with torch.no_grad():  # a fresh net's zero output layer ignores its inputs: perturb every weight
        for p in net.parameters():
            p.add_(0.2 * torch.randn_like(p))
    net.eval()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 1, 8, 8, generator=g)
    op = make_operator("pixel_mask", 6, (1, 8, 8), 1e-3, np.random.default_rng(2), deleted=0.75)
    y1 = op.observe(x, generator=g)
    y2 = op.observe(torch.randn(6, 1, 8, 8, generator=g), generator=g)
    x_t = torch.randn(6, 1, 8, 8, generator=g)
    sigma = torch.full((6,), 0.7)
    out1 = ConditionalPosterior(net, lambda v, s: v, op, y1)(x_t, sigma)
    out2 = ConditionalPosterior(net, lambda v, s: v, op, y2)(x_t, sigma)
    assert out1.shape == x_t.shape and torch.isfinite(out1).all()
    per_sample = (out1 - out2).reshape(6, -1).abs().amax(1)
    assert (per_sample > 1e-4).all(), per_sample
    # the condition is A^T y: y changed on deleted pixels only changes nothing
    deleted = op.measured(y1) == 0
    y3 = torch.where(deleted, torch.full_like(y1, 5.0), y1)
    assert torch.equal(condition(op, y3), condition(op, y1))
    assert torch.equal(ConditionalPosterior(net, lambda v, s: v, op, y3)(x_t, sigma), out1)
    # a zero y: finite output, different from a real y's
    post0 = ConditionalPosterior(net, lambda v, s: v, op, torch.zeros_like(y1))
    out0 = post0(x_t, sigma)
    assert torch.isfinite(out0).all() and not torch.allclose(out0, out1)
    assert post0.stats["calls"] == 1 and post0.stats["fallbacks"] == 0
    # the direct net call agrees with the posterior denoiser (condition = masked y)
    with torch.no_grad():
        assert torch.equal(net(x_t, y1 * op.measured(y1), sigma), out1)


# -- (2) the re-corrupted pairs ------------------------------------------------------------------
def test_fresh_mask_per_pair_with_the_observation_models_rate():
    x = torch.randn(1, 1, 8, 8).expand(4000, 1, 8, 8).contiguous()
    op, y = recorrupt(x, PIXEL, np.random.default_rng(0), torch.Generator().manual_seed(0))
    assert isinstance(op, PixelMaskOperator) and len(op) == len(x)
    mask = op.params()["mask"]
    assert not np.array_equal(mask[0], mask[1])  # two pairs of the same x: different masks
    assert len(np.unique(mask.reshape(len(x), -1), axis=0)) > 0.99 * len(x)
    deleted = 1.0 - mask.mean()
    se = math.sqrt(0.75 * 0.25 / mask.size)
    assert abs(deleted - 0.75) < 3 * se, (deleted, se)
    m = torch.as_tensor(mask, dtype=y.dtype)[:, None]
    assert torch.equal(y * (1 - m), torch.zeros_like(y))  # deleted pixels are zero in y'
    assert float((y - x * m).abs().max()) < 1e-2  # noise_std 1e-3 on the measured ones
    # the operator kind and options come from the observation config
    box = {"operator": "box_mask", "options": {"box": 3}, "noise_std": 0.0}
    op_b, _ = recorrupt(x[:8], box, np.random.default_rng(0))
    assert isinstance(op_b, BoxMaskOperator) and op_b.options["box"] == 3


def test_mstep_draws_new_masks_every_step_from_the_job_streams(setup, monkeypatch):
    cfg, d, x = setup
    seen = []

    def spy(xb, obs_cfg, rng, generator=None):
        op, y = recorrupt(xb, obs_cfg, rng, generator)
        seen.append(op.params()["mask"].copy())
        return op, y

    monkeypatch.setattr(diffem_module, "recorrupt", spy)
    method = _method(cfg, recorrupt="step")
    job = Job(cfg, "digits", "d", 1)
    part, _ = method.conditional_mstep(job, x, None, None)
    assert len(seen) == 4 and all(len(m) == cfg["experiments"]["digits"]["mstep"]["batch_size"] for m in seen)
    assert not np.array_equal(seen[0], seen[1])
    assert not any(np.array_equal(seen[0][0], seen[0][i]) for i in range(1, 4))
    # step s's masks are the numpy stream (experiment, variant, iteration, mstep_conditional, corruption, s)
    rng = numpy_rng(cfg["seed"], *job.stream("mstep_conditional", "corruption", 2))
    ref = make_operator("pixel_mask", len(seen[2]), (1, 8, 8), 1e-3, rng, deleted=0.75).params()["mask"]
    assert np.array_equal(seen[2], ref)
    # deterministic: the same job trains the same weights
    again, _ = _method(cfg, recorrupt="step").conditional_mstep(job, x, None, None)
    assert all(torch.equal(part["weights"][k], again["weights"][k]) for k in part["weights"])


# -- (3) the E-step's posterior denoisers --------------------------------------------------------
def test_iteration_1_is_mmps_on_q0_and_later_the_conditional_model(setup):
    cfg, d, x = setup
    method = _method(cfg)
    q0 = load_prior(d / "iter_000.pt")
    assert q0.kind == "gaussian"
    op = make_operator("pixel_mask", 3, (1, 8, 8), 1e-3, np.random.default_rng(0), deleted=0.75)
    y = op.observe(x[:3])
    post1 = method.posterior(q0, op, y)
    assert type(post1) is MMPS and post1.options.maxiter == 1 and post1.options.covariance == "tweedie"
    path, _ = _mstep(cfg, d, x, 1, name="e")
    q1 = load_prior(path)
    post2 = method.posterior(q1, op, y)
    assert type(post2) is ConditionalPosterior and post2.denoiser is q1.denoiser
    assert method.posterior(q1, op, y).conditional is post2.conditional  # built once per prior
    assert not method.uses_previous(1) and method.uses_previous(2)
    # the conditional E-step through run_estep: finite samples of x's shape
    from emprior.data.observations import load_observations

    obs = load_observations(d / "observations.h5").subset(np.arange(10))
    res = run_estep(q1, method, obs, Job(cfg, "digits", "d", 2), [0])
    assert res["x"].shape == (10, 1, 8, 8) and torch.isfinite(res["x"]).all()
    assert res["solver"]["calls"] >= cfg["experiments"]["digits"]["estep"]["steps"]  # one call per step (+ last)


# -- (4) the checkpoint round trip ---------------------------------------------------------------
def test_model_pt_round_trip_with_conditional_weights(setup):
    cfg, d, x = setup
    path1, ckpt1 = _mstep(cfg, d, x, 1, name="rt")
    raw = torch.load(path1, map_location="cpu", weights_only=True)
    assert raw["kind"] == "denoiser" and "weights" in raw and "raw_weights" in raw
    part = raw["conditional"]
    assert part["cond_channels"] == 1 and part["x_shape"] == [1, 8, 8]
    assert part["net"] == cfg["experiments"]["digits"]["denoiser"]
    assert all(isinstance(v, torch.Tensor) for v in part["weights"].values())
    assert all(isinstance(v, torch.Tensor) for v in part["raw_weights"].values())
    assert part["train"]["steps"] == 4
    prior = load_prior(path1)
    assert prior.kind == "denoiser" and prior.x_shape == (1, 8, 8)
    net = _method(cfg).conditional(prior)
    assert all(torch.equal(net.state_dict()[k], part["weights"][k]) for k in part["weights"])
    assert not Path(str(path1) + ".resume.pt.conditional.pt").exists()
    # iteration 2 continues both nets from iteration 1's weights (conditional: EMA, unconditional: raw)
    path2, ckpt2 = _mstep(cfg, d, x, 2, previous=prior, name="rt")
    fresh = _method(cfg).mstep(Job(cfg, "digits", "d", 2), x, None, None, str(d / "fresh.resume.pt"))[0]
    for key in ("raw_weights",):
        assert any(not torch.equal(ckpt2["conditional"][key][k], fresh["conditional"][key][k])
                   for k in fresh["conditional"][key])
        assert any(not torch.equal(ckpt2[key][k], fresh[key][k]) for k in fresh[key])
    # option conditional_steps overrides the conditional budget only
    m = make_method({"method": "diffem", "conditional_steps": 2}, cfg["experiments"]["digits"])
    assert isinstance(m, DiffEM)
    c3, _ = m.mstep(Job(cfg, "digits", "d", 1), x, None, None, str(d / "c3.resume.pt"))
    assert c3["conditional"]["train"]["steps"] == 2 and c3["train"]["steps"] == 4


def test_conditional_training_resumes_to_identical_weights(setup, monkeypatch, tmp_path):
    cfg, d, x = setup
    job = Job(cfg, "digits", "d", 1)
    ref, _ = _method(cfg, recorrupt="step").mstep(job, x, None, None, str(tmp_path / "ref.pt.resume.pt"))
    calls = {"n": 0}

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return recorrupt(*a, **k)

    resume = str(tmp_path / "model.pt.resume.pt")
    monkeypatch.setattr(diffem_module, "recorrupt", dying)
    with pytest.raises(KeyboardInterrupt):
        _method(cfg, recorrupt="step").mstep(job, x, None, None, resume)
    assert Path(resume + ".conditional.pt").exists()
    monkeypatch.setattr(diffem_module, "recorrupt", recorrupt)
    got, runtime = _method(cfg, recorrupt="step").mstep(job, x, None, None, resume)
    assert runtime["conditional_resumed_from"] == 3 and not Path(resume + ".conditional.pt").exists()
    for key in ("weights", "raw_weights"):
        for k, v in ref["conditional"][key].items():
            assert torch.equal(v, got["conditional"][key][k]), k
        for k, v in ref[key].items():
            assert torch.equal(v, got[key][k]), k


def test_conditional_mstep_overrides_only_the_conditional_model(setup, tmp_path):
    cfg, d, x = setup
    m = _method(cfg, conditional_mstep={"ema_decay": None, "steps": 3})
    ckpt, _ = m.mstep(Job(cfg, "digits", "d", 1), x, None, None, str(tmp_path / "o.resume.pt"))
    part = ckpt["conditional"]
    assert part["train"]["steps"] == 3 and ckpt["train"]["steps"] == 4
    assert all(torch.equal(part["weights"][k], part["raw_weights"][k]) for k in part["weights"])  # no EMA
    assert any(not torch.equal(ckpt["weights"][k], ckpt["raw_weights"][k]) for k in ckpt["weights"])  # EMA 0.9
    bad = copy.deepcopy(cfg)
    bad["experiments"]["digits"]["variants"] = {"d": {"method": "diffem", "conditional_mstep": {"emadecay": 0.9}}}
    with pytest.raises(Exception, match="conditional_mstep"):
        validate_config(bad)
        make_method(bad["experiments"]["digits"]["variants"]["d"], bad["experiments"]["digits"])


# -- (5) the reference's M-step: EMA warm start, one corruption per sample per M-step --------------
def _capture_em_mstep(monkeypatch):
    """Patch em_mstep to record the conditional net's weights and data when training starts."""
    import emprior.training.mstep as mstep_module

    seen = []
    real = mstep_module.em_mstep

    def spy(net, x, *a, **k):
        if "conditional" in k.get("context", a[3] if len(a) > 3 else ""):
            seen.append(({n: v.clone() for n, v in net.state_dict().items()}, x.clone()))
        return real(net, x, *a, **k)

    monkeypatch.setattr(mstep_module, "em_mstep", spy)
    return seen


def test_conditional_net_continues_from_the_previous_ema_weights(setup, monkeypatch):
    cfg, d, x = setup
    path, ckpt1 = _mstep(cfg, d, x, 1, name="warm")
    prev = ckpt1["conditional"]
    assert prev["train"]["warm_start"] == "none" and prev["train"]["ema_decay"] == 0.9999  # the reference's EMA
    assert any(not torch.equal(prev["weights"][k], prev["raw_weights"][k]) for k in prev["weights"])
    prior = load_prior(path)
    seen = _capture_em_mstep(monkeypatch)
    part, _ = _method(cfg).conditional_mstep(Job(cfg, "digits", "d", 2), x, prior, None)
    start = seen[-1][0]
    assert all(torch.equal(start[k], prev["weights"][k]) for k in prev["weights"])  # EMA, not raw
    assert part["train"]["warm_start"] == "weights"
    _method(cfg, conditional_warm_start="raw").conditional_mstep(Job(cfg, "digits", "d", 2), x, prior, None)
    assert all(torch.equal(seen[-1][0][k], prev["raw_weights"][k]) for k in prev["raw_weights"])


def test_one_fresh_corruption_per_sample_for_the_whole_mstep(setup, monkeypatch):
    cfg, d, x = setup
    seen = _capture_em_mstep(monkeypatch)
    job = Job(cfg, "digits", "d", 1)
    part, _ = _method(cfg).conditional_mstep(job, x, None, None)
    data = seen[-1][1]
    assert data.shape == (len(x), 2, 8, 8)  # x and A'^T y' side by side: each pair fixed for all steps
    assert torch.equal(data[:, :1], x)
    c = data[:, 1:]
    measured = c != 0
    frac = float(measured.float().mean())
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / c.numel()), frac
    assert float((c - x)[measured].abs().max()) < 1e-2  # y' = A' x + 1e-3 noise on the measured pixels
    rng = numpy_rng(cfg["seed"], *job.stream("mstep_conditional", "corruption"))
    ref = make_operator("pixel_mask", len(x), (1, 8, 8), 1e-3, rng, deleted=0.75).params()["mask"]
    assert torch.equal(measured, torch.as_tensor(ref, dtype=torch.bool)[:, None].expand_as(measured))
    assert part["train"]["corruption"].startswith("one fresh operator per sample")


# -- (6) the final stage: a fresh unconditional model on the last conditional net's samples -------
def test_final_model_is_fresh_and_trained_on_the_last_conditional_nets_samples(setup, tmp_path):
    from emprior.pipeline import final as final_rules

    cfg, d, x = setup
    method = _method(cfg)
    assert method.final_stage and not make_method({"method": "diem"}, cfg["experiments"]["digits"]).final_stage
    last, _ = _mstep(cfg, d, x, 1, name="last")  # iterations: 1 in tiny.yaml -> the final stage is "iteration 2"
    fdir = tmp_path / "final"
    shards = []
    for j in range(2):
        shards.append(str(fdir / "posterior" / f"shard_{j}.h5"))
        em_rules.estep(Job(cfg, "digits", "d", 2), j, str(last), str(d / "observations.h5"), shards[-1])
    em_rules.gather(Job(cfg, "digits", "d", 2), str(fdir / "posterior.h5"), shards)
    post, _ = load_h5(fdir / "posterior.h5")
    # the samples are the last conditional net's: the same blocks drawn directly with it agree
    from emprior.data.observations import load_observations

    obs = load_observations(d / "observations.h5")
    prior = load_prior(last)
    direct = run_estep(prior, method, obs, Job(cfg, "digits", "d", 2), [0])
    assert np.array_equal(post["x"][direct["index"].numpy() if hasattr(direct["index"], "numpy")
                                    else direct["index"]], direct["x"].numpy())
    out = fdir / "model.pt"
    final_rules.final_model(Job(cfg, "digits", "d", 2), str(fdir / "posterior.h5"), str(last), str(out))
    ckpt = torch.load(out, map_location="cpu", weights_only=True)
    src = ckpt["train"]["source"]
    assert ckpt["kind"] == "denoiser" and ckpt["train"]["stage"] == "final" and ckpt["train"]["fresh"]
    assert src["posterior"] == "final/posterior.h5" and src["model"] == f"{d.name}/last_1.pt"
    from emprior.core.artifacts import verify

    assert src["posterior_sha256"] == verify(fdir / "posterior.h5")["sha256"]
    assert src["model_sha256"] == verify(last)["sha256"]
    prov = verify(out)["provenance"]
    assert prov["rule"] == "final_model" and prov["trained_on"] == "final/posterior.h5"
    assert prov["drawn_by_sha256"] == verify(last)["sha256"]
    # from scratch: the same as the unconditional M-step with no previous model, not a warm start
    from emprior.methods.diffem import merged_mstep
    from emprior.methods.stages import denoiser_mstep

    data = torch.as_tensor(post["x"])
    exp = cfg["experiments"]["digits"]
    cfg_final = merged_mstep(exp["mstep"], {"ema_decay": 0.9999}, None)
    job2 = Job(cfg, "digits", "d", 2)
    fresh, _ = denoiser_mstep(job2, data, None, str(tmp_path / "f.resume.pt"), mstep_cfg=cfg_final)
    warm, _ = denoiser_mstep(job2, data, prior, str(tmp_path / "w.resume.pt"), mstep_cfg=cfg_final)
    assert all(torch.equal(ckpt["weights"][k], fresh["weights"][k]) for k in fresh["weights"])
    assert any(not torch.equal(ckpt["weights"][k], warm["weights"][k]) for k in warm["weights"])
    assert "conditional" not in ckpt


def test_table1_scores_the_final_model_and_the_plan_carries_the_final_stage(setup, tmp_path):
    from emprior.config.planning import PlanFacts, compute_facts
    from emprior.core.artifacts import save_json
    from emprior.report.tables import table1_frame

    cfg, d, x = setup
    exp = cfg["experiments"]["digits"]

    def rec(k, sinkhorn, **extra):
        r = {"experiment": "digits", "variant": "d", "iteration": k, "quality": {"sinkhorn": sinkhorn}, **extra}
        return str(save_json(tmp_path / f"m{k}.json", r, {"rule": "iteration_metrics"}))

    df = table1_frame(cfg, [rec(1, 25.0), rec(2, 21.5, stage="final", em_iterations=1)])
    row = df[df.variant == "d"].iloc[0]
    assert row.method == "DiffEM" and row.sinkhorn == 21.5 and row.iterations == 1
    facts = compute_facts(cfg)
    assert facts.method("digits", "d").final_stage
    assert PlanFacts.from_json(facts.to_json()).method("digits", "d").final_stage
    off = copy.deepcopy(cfg)
    off["experiments"]["digits"]["variants"] = {"d": {"method": "diffem", "final_model": False},
                                               "q": {"method": "diem"}}
    facts = compute_facts(off)
    assert not facts.method("digits", "d").final_stage and not facts.method("digits", "q").final_stage
    assert exp["variants"]["d"]["method"] == "diffem"

"""AmbientDiffusion as its official code runs it (giannisdaras/ambient-diffusion @ bc613d6): per-image
fixed further masks, EDM log-normal noise, one training run across DAG iterations, Heun with clipping."""

import math

import pytest
import torch

import emprior.methods.ambient as amb
from emprior.core.job import Job
from emprior.methods import make_method
from emprior.methods.ambient import build_ambient_denoiser, further_masks, train_ambient

from tests.unit.methods.test_ambient import NET, SCHEDULE, _batch, _digits_cfg, _net, _obs


def test_further_mask_of_an_image_is_the_same_at_every_step_and_iteration(monkeypatch):
    cfg = _digits_cfg()
    cfg["experiments"]["digits"]["iterations"] = 2
    obs = _obs(cfg, n=24)
    seen: dict[bytes, torch.Tensor] = {}
    calls = []
    orig = amb.ambient_loss

    def spy(denoiser, y, mask, schedule, delta, generator=None, a_tilde=None, **kw):
        assert a_tilde is not None
        calls.append(len(y))
        for yi, ai in zip(y, a_tilde * mask):
            key = yi.numpy().tobytes()
            assert torch.equal(seen.setdefault(key, ai.clone()), ai)  # this image: always the same A~
        return orig(denoiser, y, mask, schedule, delta, generator=generator, a_tilde=a_tilde, **kw)

    monkeypatch.setattr(amb, "ambient_loss", spy)
    method = make_method({"method": "ambient"}, cfg["experiments"]["digits"])
    ck1, _ = method.mstep(Job(cfg, "digits", "v", 1), obs.y, None, obs, "")
    from emprior.priors.checkpoint import prior_from_checkpoint

    method.mstep(Job(cfg, "digits", "v", 2), obs.y, prior_from_checkpoint(ck1), obs, "")
    assert len(calls) == 12 and len(seen) > 12  # both iterations' steps, many images seen more than once
    a = torch.as_tensor(obs.op.measured(torch.as_tensor(obs.y)).expand(24, 1, 8, 8), dtype=torch.float32)
    f = further_masks(a, 0.1, 7)
    assert torch.equal(f, further_masks(a, 0.1, 7)) and bool((f <= a).all())
    hidden = float((a - f).sum() / a.sum())
    assert abs(hidden - 0.1) < 0.05


def test_lognormal_noise_levels():
    y, mask = _batch(b=4096)
    sigmas = []

    def den(x, cond, sigma):
        sigmas.append(sigma)
        return x

    amb.ambient_loss(den, y, mask, SCHEDULE, 0.1, generator=torch.Generator().manual_seed(0), noise="lognormal")
    ln = torch.log(sigmas[0])
    assert abs(float(ln.mean()) + 1.2) < 0.06 and abs(float(ln.std()) - 1.2) < 0.05


def test_two_chunks_equal_one_uninterrupted_run():
    """Optimiser, lr schedule, EMA and step counter continue: steps 0-6 then 6-12 give the weights, EMA and
    losses of one 12-step run (same batch stream)."""
    y, mask = _batch(b=32)
    mstep = {"steps": 12, "batch_size": 8, "lr": 1e-3, "scheduler": "linear", "lr_final": 1e-5, "ema_decay": 0.9,
             "clip": 1.0, "augment": ["hflip"]}
    further = further_masks(mask, 0.1, 3)
    torch.manual_seed(0)
    one = build_ambient_denoiser(NET, (1, 8, 8), 1)
    whole = train_ambient(one, y, mask, SCHEDULE, mstep, 0.1, torch.Generator().manual_seed(5), further=further,
                          noise="lognormal")
    torch.manual_seed(0)
    two = build_ambient_denoiser(NET, (1, 8, 8), 1)
    gen = torch.Generator().manual_seed(5)
    a = train_ambient(two, y, mask, SCHEDULE, mstep, 0.1, gen, further=further, noise="lognormal", until=6)
    assert a["steps"] == 6 and a["state"]["step"] == 6
    b = train_ambient(two, y, mask, SCHEDULE, mstep, 0.1, gen, further=further, noise="lognormal",
                      start_state=a["state"], until=12)
    assert b["steps"] == 12 and b["state"]["scheduler"]["last_epoch"] == 12
    assert all(int(st["step"]) == 12 for st in b["state"]["optimizer"]["state"].values())
    for k, v in one.state_dict().items():
        assert torch.equal(v, two.state_dict()[k]), k
    e1, e2 = whole["ema"].state_dict(), b["ema"].state_dict()
    assert repr(e1) == repr(e2)  # the EMA shadow continued too
    assert whole["loss"] == a["loss"] + b["loss"]


def test_iteration_two_continues_the_run_and_checks_the_state():
    cfg = _digits_cfg()
    cfg["experiments"]["digits"]["iterations"] = 2
    cfg["experiments"]["digits"]["mstep"].update(scheduler="linear", lr_final=1e-5)
    obs = _obs(cfg, n=24)
    method = make_method({"method": "ambient"}, cfg["experiments"]["digits"])
    from emprior.core.errors import ArtifactError
    from emprior.priors.checkpoint import prior_from_checkpoint

    ck1, _ = method.mstep(Job(cfg, "digits", "v", 1), obs.y, None, obs, "")
    assert ck1["train"]["steps"] == 6 and ck1["train_state"]["step"] == 6
    assert ck1["train_state"]["scheduler"]["last_epoch"] == 6
    ck2, _ = method.mstep(Job(cfg, "digits", "v", 2), obs.y, prior_from_checkpoint(ck1), obs, "")
    assert ck2["train"]["steps"] == 12 and ck2["train_state"]["scheduler"]["last_epoch"] == 12
    # the lr schedule spans both iterations: after 6 of 12 steps the lr is half-way, not at lr_final
    m = cfg["experiments"]["digits"]["mstep"]
    lr6 = ck1["train_state"]["optimizer"]["param_groups"][0]["lr"]
    assert lr6 == pytest.approx(m["lr"] - (m["lr"] - m["lr_final"]) * 0.5, rel=1e-6)
    no_state = {k: v for k, v in ck1.items() if k != "train_state"}
    with pytest.raises(ArtifactError, match="no training state at step 6"):
        method.mstep(Job(cfg, "digits", "v", 2), obs.y, prior_from_checkpoint(no_state), obs, "")
    restart = make_method({"method": "ambient", "training": "restart"}, cfg["experiments"]["digits"])
    ck, _ = restart.mstep(Job(cfg, "digits", "v", 2), obs.y, prior_from_checkpoint(no_state), obs, "")
    assert ck["train"]["steps"] == 6 and "train_state" not in ck


def test_heun_sampling_is_clipped_and_deterministic_given_the_masks():
    cfg = _digits_cfg(clip=0.5)
    obs = _obs(cfg, n=24)
    job = Job(cfg, "digits", "v", 1)
    method = make_method({"method": "ambient", "clip": 0.5}, job.exp)
    from emprior.priors.checkpoint import prior_from_checkpoint

    ck, _ = method.mstep(job, obs.y, None, obs, "")
    prior = prior_from_checkpoint(ck)
    net = _net()
    prior.module.load_state_dict({k: 3 * v for k, v in net.state_dict().items()})  # large outputs
    calls = []
    orig = amb.AmbientSamplingDenoiser.__call__
    amb.AmbientSamplingDenoiser.__call__ = lambda self, x, s: calls.append(1) or orig(self, x, s)
    try:
        x = method.sample_prior(job, prior, 6, torch.Generator().manual_seed(0))
    finally:
        amb.AmbientSamplingDenoiser.__call__ = orig
    assert float(x.abs().max()) <= 0.5 + 1e-6 and float(x.abs().max()) > 0.1
    assert len(calls) == 2 * 17 + 1  # EDM num_steps = 18: 17 Heun steps (2 calls) + the Euler step to 0
    off = make_method({"method": "ambient", "clip": 0.0}, job.exp).sample_prior(job, prior, 6,
                                                                            torch.Generator().manual_seed(0))
    assert float(off.abs().max()) > 0.5
    assert math.isfinite(float(off.sum()))


def test_bad_sampler_or_noise_is_one_line():
    from emprior.core.errors import ConfigError

    exp = _digits_cfg()["experiments"]["digits"]
    with pytest.raises(ConfigError, match=r"^experiments\.digits\.variants\.v\.sampler: must be 'heun' or 'evaluate'"):
        make_method({"method": "ambient", "sampler": "ddpm"}, exp, where="experiments.digits.variants.v")
    with pytest.raises(ConfigError, match="noise"):
        make_method({"method": "ambient", "noise": "uniform"}, exp, where="experiments.digits.variants.v")

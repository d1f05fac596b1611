"""AmbientDiffusion (emprior.methods.ambient): the masked loss, the further corruption, the mask as a
network input, the checkpoint and the sampler."""

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emprior.core.artifacts import save_torch
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.data.observations import corrupt
from emprior.diffusion.schedule import Schedule
from emprior.methods import make_method
from emprior.methods.ambient import (AmbientSamplingDenoiser, ambient_loss, build_ambient_denoiser, draw_training_masks,
                                     further_corrupt, train_ambient)
from emprior.priors.checkpoint import load_prior

REPO = Path(__file__).resolve().parents[3]
NET = {"net": "unet", "hid_channels": [8, 16], "hid_blocks": [1, 1], "attention_heads": [0, 2], "dropout": 0.0,
       "emb_features": 16}
SCHEDULE = Schedule(1e-3, 100.0)


def _net(seed=0, x_shape=(1, 8, 8), cond=1):
    torch.manual_seed(seed)
    net = build_ambient_denoiser(NET, x_shape, cond)
    with torch.no_grad():  # a non-zero output layer (a fresh one is zero), so h depends on its inputs
        for p in net.parameters():
            p.add_(0.1 * torch.randn(p.shape))
    return net.eval()


def _batch(b=16, c=1, rho=0.75, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = (torch.rand((b, 1, 8, 8), generator=g) >= rho).float()
    y = torch.randn((b, c, 8, 8), generator=g) * mask
    return y, mask


def test_loss_ignores_unobserved_values_of_y_and_of_the_input():
    net = _net()
    y, mask = _batch()
    garbage = y + (1 - mask) * 1e3 * torch.randn(y.shape)
    nan = torch.where(mask > 0, y, torch.full_like(y, float("nan")))
    losses = [ambient_loss(net, v, mask, SCHEDULE, 0.1, torch.Generator().manual_seed(3)) for v in (y, garbage, nan)]
    assert math.isfinite(losses[0].item()) and losses[0].item() > 0
    assert losses[0].item() == losses[1].item() == losses[2].item()  # bit for bit

    # the network sees only A~ x_t: what y holds off the mask never reaches it
    seen = []

    def spy(inp, cond, sigma):
        seen.append((inp.clone(), cond.clone()))
        return net(inp, cond, sigma)

    for v in (y, garbage):
        ambient_loss(spy, v, mask, SCHEDULE, 0.1, torch.Generator().manual_seed(3))
    assert torch.equal(seen[0][0], seen[1][0]) and torch.equal(seen[0][1], seen[1][1])
    inp, cond = seen[0]
    assert torch.all(inp[cond.expand_as(inp) == 0] == 0)  # hidden by A~: zero in the input


def test_loss_is_zero_for_a_denoiser_that_returns_the_observed_pixels():
    y, mask = _batch()
    x = y + (1 - mask) * torch.randn(y.shape)  # anything off the mask
    loss = ambient_loss(lambda inp, cond, sigma: x, y, mask, SCHEDULE, 0.1, torch.Generator().manual_seed(0))
    assert loss.item() == 0.0
    # an error of 1 on every observed pixel: the mean over observed pixels of the DSM weight
    # 1/sigma^2 + 1 where A~ shows the pixel, and 1 where A~ hides it
    seen = []

    def off_by_one(inp, cond, sigma):
        seen.append((cond, sigma))
        return x + mask

    loss1 = ambient_loss(off_by_one, y, mask, SCHEDULE, 0.1, torch.Generator().manual_seed(0))
    cond, sigma = seen[0]
    lam = 1 / sigma**2 + 1
    shown, hidden = cond.sum((1, 2, 3)), (mask - cond).sum((1, 2, 3))
    torch.testing.assert_close(loss1, ((lam * shown + hidden) / mask.sum((1, 2, 3))).mean())
    assert hidden.sum() > 0 and shown.sum() > 0


def test_further_corruption_hides_delta_of_the_observed_pixels():
    y, mask = _batch(b=4000)
    g = torch.Generator().manual_seed(1)
    hidden, observed = 0, 0
    for _ in range(5):
        a_tilde = further_corrupt(mask, 0.1, g)
        assert torch.all(a_tilde <= mask)  # never un-hides a deleted pixel
        assert set(a_tilde.unique().tolist()) <= {0.0, 1.0}
        hidden += int(((mask == 1) & (a_tilde == 0)).sum())
        observed += int(mask.sum())
    frac = hidden / observed
    se = math.sqrt(0.1 * 0.9 / observed)
    assert abs(frac - 0.1) < 3 * se, (frac, se)
    # fresh per draw
    assert not torch.equal(further_corrupt(mask, 0.1, g), further_corrupt(mask, 0.1, g))

    # inside the loss the network's mask is such an A~
    conds = []

    def spy(inp, cond, sigma):
        conds.append(cond)
        return torch.zeros_like(inp)

    ambient_loss(spy, y, mask, SCHEDULE, 0.1, torch.Generator().manual_seed(2))
    cond = conds[0]
    assert torch.all(cond <= mask)
    frac = float(((mask == 1) & (cond == 0)).sum() / mask.sum())
    assert abs(frac - 0.1) < 3 * math.sqrt(0.09 / float(mask.sum()))


def test_network_input_carries_the_mask():
    net = _net()
    y, mask = _batch(b=4)
    sigma = torch.full((4,), 0.5)
    other = further_corrupt(mask, 0.5, torch.Generator().manual_seed(7))  # not the seed of the mask itself
    assert not torch.equal(other, mask)
    with torch.no_grad():
        inp = y * other  # the same masked image, two different masks
        out1, out2 = net(inp, other, sigma), net(inp, mask, sigma)
    assert (out1 - out2).abs().max() > 1e-4
    # a fresh net (zero output layer) is the N(0, I) denoiser x_t / (sigma^2 + 1) on what A~ shows, 0 elsewhere
    torch.manual_seed(0)
    fresh = build_ambient_denoiser(NET, (1, 8, 8), 1)
    with torch.no_grad():
        torch.testing.assert_close(fresh(inp, other, sigma), fresh(inp, mask, sigma))
        torch.testing.assert_close(fresh(inp, other, sigma), inp / 1.25)


def test_training_masks_follow_the_corruption_distribution():
    corruption = {"operator": "pixel_mask", "options": {"deleted": 0.75}, "delta": 0.1}
    m = draw_training_masks(corruption, 2000, (1, 8, 8), np.random.default_rng(0))
    assert m.shape == (2000, 1, 8, 8) and set(np.unique(m)) <= {0.0, 1.0}
    p = 0.25 * 0.9
    assert abs(m.mean() - p) < 3 * math.sqrt(p * (1 - p) / m.size)
    np.testing.assert_array_equal(m, draw_training_masks(corruption, 2000, (1, 8, 8), np.random.default_rng(0)))


def _digits_cfg(**options):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    exp = cfg["experiments"]["digits"]
    exp["variants"] = {"v": {"method": "ambient", **options}}
    exp["mstep"] = {**exp["mstep"], "steps": 6, "checkpoint_every": 3}
    exp["evaluate"] = {**exp["evaluate"], "steps": 4}
    cfg["experiments"] = {"digits": exp}
    return cfg


def _obs(cfg, n=48):
    x = np.random.default_rng(0).normal(size=(n, 1, 8, 8)).astype(np.float32)
    return corrupt(x, cfg["experiments"]["digits"]["observation"], 0, "digits")


def test_checkpoint_round_trip_and_prior_samples(tmp_path):
    cfg = _digits_cfg()
    obs = _obs(cfg)
    job = Job(cfg, "digits", "v", 1)
    method = make_method({"method": "ambient"}, job.exp)
    assert method.stages == ("mstep",) and method.label == "AmbientDiffusion" and method.uses_previous(2)
    assert not method.uses_previous(1)
    ckpt, runtime = method.mstep(job, obs.y, None, obs, str(tmp_path / "model.pt.resume.pt"))
    assert ckpt["kind"] == "ambient" and ckpt["cond_channels"] == 1 and ckpt["train"]["steps"] == 6
    assert all(math.isfinite(v) for v in ckpt["train"]["loss"])
    save_torch(tmp_path / "model.pt", ckpt, job.provenance("mstep"))
    prior = load_prior(tmp_path / "model.pt")
    assert prior.kind == "ambient" and prior.x_shape == (1, 8, 8)
    for k, v in prior.module.state_dict().items():
        assert torch.equal(v, ckpt["weights"][k]), k
    x1 = method.sample_prior(job, prior, 5, torch.Generator().manual_seed(0))
    x2 = method.sample_prior(job, prior, 5, torch.Generator().manual_seed(0))
    assert x1.shape == (5, 1, 8, 8) and torch.isfinite(x1).all() and torch.equal(x1, x2)
    for mode in ("resample", "full"):
        other = make_method({"method": "ambient", "sampling_mask": mode}, job.exp)
        x = other.sample_prior(job, prior, 5, torch.Generator().manual_seed(0))
        assert x.shape == (5, 1, 8, 8) and torch.isfinite(x).all() and not torch.equal(x, x1)
    with pytest.raises(Exception, match="sample_prior"):
        prior.denoiser(torch.zeros(1, 1, 8, 8), torch.ones(1))

    # iteration 2 continues from iteration 1's raw weights, and gives the same bytes when rerun
    job2 = Job(cfg, "digits", "v", 2)
    ck2, _ = method.mstep(job2, obs.y, prior, obs, "")
    ck2b, _ = method.mstep(job2, obs.y, load_prior(tmp_path / "model.pt"), obs, "")
    for k in ck2["weights"]:
        assert torch.equal(ck2["weights"][k], ck2b["weights"][k])
    assert any(not torch.equal(ck2["raw_weights"][k], ckpt["raw_weights"][k]) for k in ck2["raw_weights"])


def test_fixed_mask_is_kept_and_resample_draws_anew():
    net = _net()
    corruption = {"operator": "pixel_mask", "options": {"deleted": 0.75}, "delta": 0.1}
    fixed = AmbientSamplingDenoiser(net, corruption, (1, 8, 8), 1, "fixed", np.random.default_rng(0))
    again = AmbientSamplingDenoiser(net, corruption, (1, 8, 8), 1, "resample", np.random.default_rng(0))
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(fixed.mask(x), fixed.mask(x))
    assert not torch.equal(again.mask(x), again.mask(x))


def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    y, mask = _batch(b=32)
    mstep = {"steps": 6, "batch_size": 8, "lr": 1e-3, "scheduler": "linear", "lr_final": 1e-5, "ema_decay": 0.9,
             "clip": 1.0, "augment": ["hflip"], "checkpoint_every": 3}
    resume = tmp_path / "state.pt"
    runs = []
    for _ in range(2):  # the first run leaves the step-3 state behind; the second resumes from it
        torch.manual_seed(0)
        net = build_ambient_denoiser(NET, (1, 8, 8), 1)
        res = train_ambient(net, y, mask, SCHEDULE, mstep, 0.1, torch.Generator().manual_seed(5), resume_path=resume)
        runs.append((res, {k: v.clone() for k, v in net.state_dict().items()}))
    assert runs[0][0]["resumed_from"] == 0 and runs[1][0]["resumed_from"] == 3
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k
    assert runs[0][0]["loss"] == runs[1][0]["loss"]


def test_validate_names_the_operator_key():
    cfg = _digits_cfg()
    exp = copy.deepcopy(cfg["experiments"]["digits"])
    exp["observation"] = {"operator": "fourier_lines", "options": {}, "noise_std": 1e-3}
    with pytest.raises(ConfigError, match=r"^experiments\.digits\.observation\.operator: .*'fourier_lines'"):
        make_method({"method": "ambient"}, exp, where="experiments.digits.variants.v")
    with pytest.raises(ConfigError, match="delta"):
        make_method({"method": "ambient", "delta": 1.0}, cfg["experiments"]["digits"])

"""Figures of the Table-1 experiments: Fig. 4 (quality along iterations), Fig. 5 (deterministic DDIM
samples of q_k from one x_T) and the posterior samples beside the observations."""

import copy
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emprior.core.artifacts import load_h5, save_h5, save_json, save_torch
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.data.observations import corrupt, save_clean, save_observations
from emprior.methods.ambient import build_ambient_denoiser
from emprior.nets import build_denoiser
from emprior.pipeline.report import fig4, fig5, posterior_figure
from emprior.priors.checkpoint import gaussian_checkpoint, load_prior
from emprior.report.figures import fig5_samples, pick_observations

REPO = Path(__file__).resolve().parents[3]
PNG = b"\x89PNG\r\n\x1a\n"


def _config(variants):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    exp = cfg["experiments"]["digits"]
    exp["iterations"] = 2
    exp["evaluate"] = {**exp["evaluate"], "steps": 6}  # a stochastic ddpm evaluation sampler
    exp["variants"] = variants
    cfg["experiments"] = {"digits": exp}
    return cfg


DIEM = {"method": "diem", "posterior": {"method": "mmps", "covariance": "tweedie", "solver": "cg", "maxiter": 1}}


def _perturbed(net, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a fresh output layer is zero: make the net depend on its weights
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return net.state_dict()


def _denoiser(cfg, seed):
    exp = cfg["experiments"]["digits"]
    torch.manual_seed(0)
    w = _perturbed(build_denoiser(dict(exp["denoiser"]), (1, 8, 8)), seed)
    return {"kind": "denoiser", "x_shape": [1, 8, 8], "net": dict(exp["denoiser"]), "schedule": dict(exp["schedule"]),
            "weights": w, "raw_weights": w, "train": {"loss": [1.0], "steps": 1, "dropped": 0, "n_data": 1}}


def _gaussian():
    g = torch.Generator().manual_seed(5)
    U = torch.linalg.qr(torch.randn(64, 4, generator=g))[0]
    res = types.SimpleNamespace(mean=torch.randn(64, generator=g), U=U, s=torch.tensor([2.0, 1.5, 1.0, 0.5]), tau=0.1,
                                log_evidence=[0.0])
    return gaussian_checkpoint(res, (1, 8, 8))


def _ambient(cfg, seed):
    exp = cfg["experiments"]["digits"]
    torch.manual_seed(0)
    w = _perturbed(build_ambient_denoiser(dict(exp["denoiser"]), (1, 8, 8), 1), seed)
    return {"kind": "ambient", "x_shape": [1, 8, 8], "net": dict(exp["denoiser"]), "schedule": dict(exp["schedule"]),
            "cond_channels": 1, "corruption": {"operator": "pixel_mask", "options": {"deleted": 0.75}, "delta": 0.1},
            "weights": w, "raw_weights": w, "train": {"loss": [1.0], "steps": 1, "dropped": 0, "n_data": 1}}


def _save(root, variant, k, ckpt):
    return str(save_torch(root / "digits" / variant / f"iter_{k:03d}" / "model.pt", ckpt,
                          {"rule": "init_prior" if k == 0 else "mstep"}))


def _clean(root):
    x = np.random.default_rng(0).uniform(-2, 2, size=(32, 1, 8, 8)).astype(np.float32)
    save_clean(root / "clean.h5", x, {"name": "digits"}, {"rule": "dataset"})
    return x


def test_fig5_uses_one_x_T_for_every_variant_and_its_samples_follow_the_model(tmp_path):
    cfg = _config({"a": DIEM, "b": copy.deepcopy(DIEM)})
    # the same three models (Gaussian q_0, two nets) under two variant names
    ckpts = {0: _gaussian(), 1: _denoiser(cfg, 1), 2: _denoiser(cfg, 2)}
    models = [_save(tmp_path, v, k, c) for v in ("b", "a") for k, c in ckpts.items()]
    job = Job(cfg, "digits")
    x_T, by = fig5_samples(job, models, 4)
    assert list(by) == ["b", "a"] and sorted(by["a"]) == [0, 1, 2]  # in the order of the files given
    assert x_T.shape == (4, 1, 8, 8)
    for k in ckpts:
        assert by["a"][k].shape == (4, 1, 8, 8) and np.isfinite(by["a"][k]).all()
        np.testing.assert_array_equal(by["a"][k], by["b"][k])  # same model, same x_T: the same samples
    assert not np.array_equal(by["a"][1], by["a"][2]) and not np.array_equal(by["a"][0], by["a"][1])
    # deterministic (DDIM, eta 0): a second run gives the same bytes, whatever the evaluate sampler
    again = fig5_samples(job, models[:3], 4)[1]["b"]
    for k in ckpts:
        np.testing.assert_array_equal(again[k], by["b"][k])
    # ... and it is the deterministic DDIM map of x_T: Prior.sample_from with eta 0 from that x_T
    exp = copy.deepcopy(cfg["experiments"]["digits"])
    exp["evaluate"] = {**exp["evaluate"], "sampler": "ddim", "eta": 0.0}
    direct = load_prior(models[4]).sample_from(torch.as_tensor(x_T), exp)
    np.testing.assert_array_equal(direct.numpy(), by["a"][1])
    # vector data gets no Fig. 5
    vec = {**_gaussian(), "x_shape": [64]}
    with pytest.raises(ConfigError, match="images"):
        fig5_samples(job, [_save(tmp_path / "vec", "a", 1, vec)], 2)


def test_fig5_ambient_samples_from_the_given_x_T(tmp_path):
    cfg = _config({"amb": {"method": "ambient"}, "amb2": {"method": "ambient"}})
    ckpt = _ambient(cfg, 3)
    models = [_save(tmp_path, v, 1, ckpt) for v in ("amb", "amb2")] + [_save(tmp_path, "amb", 2, _ambient(cfg, 4))]
    x_T, by = fig5_samples(Job(cfg, "digits"), models, 3)
    np.testing.assert_array_equal(by["amb"][1], by["amb2"][1])
    assert np.isfinite(by["amb"][2]).all() and not np.array_equal(by["amb"][1], by["amb"][2])
    # other noise, other samples: the x_T given is the one sampled from
    from emprior.methods import make_method

    exp = copy.deepcopy(cfg["experiments"]["digits"])
    exp["evaluate"] = {**exp["evaluate"], "sampler": "ddim", "eta": 0.0}
    m = make_method(exp["variants"]["amb"], exp)
    prior = load_prior(models[0])
    x1 = m.sample_prior(Job(cfg, "digits", "amb", 1), prior, 3, torch.Generator().manual_seed(0),
                        x_T=torch.as_tensor(x_T))
    x2 = m.sample_prior(Job(cfg, "digits", "amb", 1), prior, 3, torch.Generator().manual_seed(0),
                        x_T=torch.as_tensor(x_T) * 0.5)
    assert not torch.equal(x1, x2)


def test_fig5_command_writes_the_png_and_the_arrays(tmp_path):
    cfg = _config({"a": DIEM, "amb": {"method": "ambient"}})
    models = [_save(tmp_path, "a", k, c) for k, c in ((0, _gaussian()), (1, _denoiser(cfg, 1)), (2, _denoiser(cfg, 2)))]
    models += [_save(tmp_path, "amb", k, _ambient(cfg, k)) for k in (1, 2)]
    _clean(tmp_path)
    out, out_h5 = tmp_path / "fig5_digits.png", tmp_path / "fig5_digits.h5"
    fig5(Job(cfg, "digits"), clean=str(tmp_path / "clean.h5"), out=str(out), out_h5=str(out_h5), models=models,
         samples=5)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    data, attrs = load_h5(out_h5, rule="fig5")
    assert data["x_T"].shape == (5, 1, 8, 8) and attrs["sampler"] == "ddim" and attrs["eta"] == 0.0
    assert list(data["a/iterations"]) == [0, 1, 2] and list(data["amb/iterations"]) == [1, 2]
    assert data["a/x"].shape == (3, 5, 1, 8, 8) and data["amb/x"].shape == (2, 5, 1, 8, 8)


def _posterior(root, variant, k, index, x):
    save_h5(root / "digits" / variant / f"iter_{k:03d}" / "posterior.h5",
            {"x": x[index], "index": np.asarray(index, np.int64), "residual_ratio": np.ones(len(index))},
            provenance={"rule": "gather_posterior"})
    return str(root / "digits" / variant / f"iter_{k:03d}" / "posterior.h5")


def test_posterior_figure_picks_rows_by_their_index(tmp_path, monkeypatch):
    cfg = _config({"a": DIEM, "b": copy.deepcopy(DIEM)})
    clean = _clean(tmp_path)
    obs = corrupt(clean, cfg["experiments"]["digits"]["observation"], 0, "digits")
    save_observations(tmp_path / "observations.h5", obs, {"rule": "observe"})
    # posterior samples tagged with their observation: sample of row i is the constant i / 100
    tag = np.broadcast_to(np.arange(32, dtype=np.float32)[:, None, None, None] / 100, (32, 1, 8, 8)).copy()
    paths = [_posterior(tmp_path, "a", 1, [5, 0, 3, 1, 2, 4, 9, 7, 8, 6], tag),   # any order, a subset
             _posterior(tmp_path, "a", 2, list(range(32))[::-1], tag),
             _posterior(tmp_path, "b", 1, [2, 3, 4, 5, 6, 7], tag), _posterior(tmp_path, "b", 2, list(range(8)), tag)]
    seen = {}
    import emprior.report.figures as figures

    real = figures.posterior_figure

    def spy(y_img, y_title, x_clean, rows, posteriors, *args, **kw):
        seen.update(y=y_img, title=y_title, clean=x_clean, rows=rows, post=posteriors)
        return real(y_img, y_title, x_clean, rows, posteriors, *args, **kw)

    monkeypatch.setattr(figures, "posterior_figure", spy)
    out = tmp_path / "posterior_digits.png"
    posterior_figure(Job(cfg, "digits"), observations=str(tmp_path / "observations.h5"),
                     clean=str(tmp_path / "clean.h5"), out=str(out), posteriors=paths, shown=3)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    assert list(seen["rows"]) == [2, 3, 4]  # the first rows every posterior file holds
    for v in ("a", "b"):
        for k in (1, 2):
            for r in (2, 3, 4):
                np.testing.assert_array_equal(seen["post"][v][k][r], np.full((1, 8, 8), r / 100, np.float32))
    np.testing.assert_array_equal(seen["clean"], clean[[2, 3, 4]])
    # y with its unmeasured pixels at 0
    mask = obs.op.measured(obs.y)[[2, 3, 4]].numpy()
    assert seen["title"] == "y\n(gray: not\nmeasured)" and np.all(seen["y"][mask == 0] == 0)
    np.testing.assert_array_equal(seen["y"][mask == 1], obs.y[[2, 3, 4]].numpy()[mask == 1])


def test_pick_observations_fills_up_when_few_are_shared():
    assert list(pick_observations([np.array([4, 1]), np.array([1, 2, 4])], 10, 3)) == [0, 1, 4]
    assert list(pick_observations([np.arange(10)], 4, 6)) == [0, 1, 2, 3]


def test_fig4_draws_the_quality_metric_per_variant(tmp_path, monkeypatch):
    import emprior.report.tables as tables

    cfg = _config({"a": DIEM, "amb": {"method": "ambient"}})
    paths = []
    for v, ks in (("a", (0, 1, 2)), ("amb", (1, 2))):
        for k in ks:
            rec = {"experiment": "digits", "variant": v, "iteration": k,
                   "quality": {"sinkhorn": 1.0 / (k + 1), "fd_digits": 10.0 / (k + 1)}}
            paths.append(str(save_json(tmp_path / v / f"iter_{k:03d}" / "metrics.json", rec,
                                       {"rule": "iteration_metrics"})))
    figs = []
    real = tables.save_figure
    monkeypatch.setattr(tables, "save_figure", lambda out, fig, prov, **kw: (figs.append(fig), real(out, fig, prov))[1])
    out = tmp_path / "fig4_digits.png"
    fig4(Job(cfg, "digits"), out=str(out), metrics=paths)
    assert out.read_bytes()[:8] == PNG and out.stat().st_size > 1000
    # one panel: fd_digits (no FID in the records), one line per variant labelled with its method
    (ax,) = figs[0].axes
    assert ax.get_title() == "FD, digits-classifier features"
    (legend,) = figs[0].legends  # one legend, outside the panel
    assert [t.get_text() for t in legend.get_texts()] == ["DiEM: a", "AmbientDiffusion: amb"]
    lines = [ln for ln in ax.get_lines() if len(ln.get_xdata())]
    assert [list(ln.get_xdata()) for ln in lines][:2] == [[0, 1, 2], [1, 2]]  # a method without q_0 starts at 1
    # each method's colour and marker from the suite's one palette (DiEM tweedie, AmbientDiffusion)
    from matplotlib.colors import to_hex

    from emprior.report.palette import style

    assert [(to_hex(ln.get_color()), ln.get_marker()) for ln in lines[:2]] == [
        (style("diem:tweedie")["color"], style("diem:tweedie")["marker"]),
        (style("ambient")["color"], style("ambient")["marker"])]
    assert all(float(t) == int(t) for t in ax.get_xticks())  # integer iteration ticks

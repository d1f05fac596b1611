"""disk-plan: the planned bytes of the tiny config, against closed forms (n x C x H x W x bytes)."""

import io

import torch

from emprior.config.loading import load_config
from emprior.core.storage import Storage
from emprior.nets import build_denoiser
from emprior.core.job import Job
from emprior.pipeline.cli import build_parser
from emprior.pipeline.plan import disk_plan
from emprior.report.disk import format_plan, plan


def _by(items, exp, var, artifact):
    (item,) = [i for i in items if (i.experiment, i.variant, i.artifact) == (exp, var, artifact)]
    return item


def test_tiny_plan_matches_closed_form(repo):
    cfg = load_config(repo / "config" / "tiny.yaml")
    items = plan(cfg)
    n, d = 128, 1 * 8 * 8  # digits: n: 128, events (1, 8, 8)
    assert _by(items, "digits", None, "data/clean.h5").raw == n * d * 4
    # y float32 + index int64 + pixel_mask's per-observation boolean mask
    assert _by(items, "digits", None, "data/observations.h5").raw == n * d * 4 + n * 8 + n * d * 1
    post = _by(items, "digits", "diem_sigma_t", "iter_k/posterior.h5")
    assert (post.files, post.raw) == (1, n * (d * 4 + 8 + 4))
    prior = _by(items, "digits", "diem_tweedie", "iter_k/prior_samples.h5")
    assert (prior.files, prior.raw) == (2, 64 * d * 4)  # iterations 0 and 1, evaluate.n_samples 64
    man = _by(items, "manifold", "diem_tweedie", "iter_k/posterior/shard_*.h5 (all shards)")
    assert (man.files, man.raw) == (2, 512 * (5 * 4 + 12))
    # model.pt: EMA + raw weights of the config's U-Net; a real checkpoint of them is that plus pickle overhead
    net = build_denoiser(dict(cfg["experiments"]["digits"]["denoiser"]), (1, 8, 8))
    weights = sum(p.numel() * 4 for p in net.state_dict().values())
    model = _by(items, "digits", "diem_tweedie", "iter_k/model.pt")
    assert model.raw == 2 * weights
    buf = io.BytesIO()
    torch.save({"weights": net.state_dict(), "raw_weights": {k: v.clone() for k, v in net.state_dict().items()}}, buf)
    assert model.raw <= len(buf.getvalue()) <= model.raw + 64_000
    # float16 halves the sample bytes of posterior and prior samples only
    items16 = plan({**cfg, "storage": {"dtype": "float16"}})
    assert _by(items16, "digits", "diem_sigma_t", "iter_k/posterior.h5").stored == n * (d * 2 + 12)
    assert _by(items16, "digits", "diem_tweedie", "iter_k/prior_samples.h5").stored == 64 * d * 2
    assert _by(items16, "digits", None, "data/observations.h5").stored == n * d * 4 + n * 8 + n * d
    # sharded prior samples are kept beside prior_samples.h5; evaluate.iterations picks the files; FID statistics
    cfg2 = {**cfg, "experiments": {"digits": {**cfg["experiments"]["digits"]}}}
    cfg2["experiments"]["digits"]["evaluate"] = {**cfg["experiments"]["digits"]["evaluate"], "shards": 2,
                                                 "iterations": "final", "fid": True}
    items2 = plan(cfg2)
    shards = _by(items2, "digits", "diem_tweedie", "iter_k/prior_samples/shard_*.h5 (all shards)")
    assert (shards.files, shards.raw) == (1, 64 * d * 4)
    assert _by(items2, "digits", None, "data/fid_reference.h5").raw == 2048 * 4 + 2048**2 * 8
    # several seeds: one of every file per seed's branch, sizes unchanged
    seeds = plan({**cfg, "experiments": {**cfg["experiments"], "digits": {**cfg["experiments"]["digits"],
                                                                          "seeds": [0, 1, 2]}}})
    for exp, var, artifact in [("digits", None, "data/observations.h5"), ("digits", "diem_tweedie", "iter_k/model.pt"),
                               ("digits", "diem_sigma_t", "iter_k/posterior.h5"),
                               ("digits", "diem_tweedie", "iter_k/prior_samples.h5")]:
        one, three = _by(items, exp, var, artifact), _by(seeds, exp, var, artifact)
        assert (three.files, three.raw) == (3 * one.files, one.raw)
    assert _by(seeds, "manifold", None, "data/clean.h5").files == 1
    total = sum(i.total_raw for i in items)
    text = format_plan(items, Storage())
    assert "gzip level 4" in text and "TOTAL" in text and f"{total / 1e3:.2f} kB" in text.splitlines()[-1]


def test_disk_plan_command(repo, capsys):
    # the command's function, not cli.main: main configures the emprior logger onto this test's captured stderr
    tiny = str(repo / "config" / "tiny.yaml")
    assert build_parser().parse_args(["disk-plan", "--config", tiny]).command == "disk-plan"
    disk_plan(Job(load_config(tiny)))
    out = capsys.readouterr().out
    assert "digits" in out and "iter_k/posterior.h5" in out and "before compression" in out


def _weight_bytes(tree) -> int:
    """Bytes of every tensor in a checkpoint's weight dicts (nested: DiffEM's "conditional" entry)."""
    if isinstance(tree, torch.Tensor):
        return tree.numel() * tree.element_size()
    if isinstance(tree, dict):
        return sum(_weight_bytes(v) for k, v in tree.items() if k in ("weights", "raw_weights", "conditional")
                   or k in ("train_state", "optimizer", "state", "exp_avg", "exp_avg_sq") or isinstance(k, int)
                   or isinstance(v, torch.Tensor) and k != "step")  # Ambient's Adam moments, not its step counters
    return 0


def test_model_pt_counts_the_networks_each_method_stores(tiny_digits, tmp_path):
    """The planned model.pt bytes equal the weight bytes of a real M-step's checkpoint, for DiEM, DiffEM
    (denoiser + conditional denoiser) and AmbientDiffusion (its masked denoiser, more input channels)."""
    from emprior.data.observations import load_observations
    from emprior.methods import make_method

    cfg = tiny_digits(tmp_path, {"diem": {"method": "diem"}, "diffem": {"method": "diffem"},
                                 "ambient": {"method": "ambient", "delta": 0.1}}, mstep={"steps": 1})
    exp = cfg["experiments"]["digits"]
    obs = load_observations(tmp_path / "observations.h5")
    planned = {v: _by(plan(cfg), "digits", v, "iter_k/model.pt").raw for v in exp["variants"]}
    for v, var in exp["variants"].items():
        method = make_method(var, exp)
        ckpt, _ = method.mstep(Job(cfg, "digits", v, 1), obs.y, None, obs, str(tmp_path / f"{v}.resume.pt"))
        assert planned[v] == _weight_bytes(ckpt), v
    assert planned["diffem"] > 1.9 * planned["diem"] and planned["ambient"] > planned["diem"]

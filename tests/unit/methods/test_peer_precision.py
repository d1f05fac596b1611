"""``precision: {autocast: bf16}`` reaches the peers' own networks as it reaches DiEM's: DiffEM's
conditional denoiser and AmbientDiffusion's masked denoiser run their convolutions and matmuls in
bfloat16 when trained and when sampled, hand float32 back to their callers, and the defaults train them
bit for bit as before (emprior.core.precision, emprior.priors.checkpoint.Prior.run)."""

import copy
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch

from emprior.core.job import Job
from emprior.data.observations import load_observations
from emprior.methods import make_method
from emprior.methods.diffem import condition
from emprior.priors.checkpoint import prior_from_checkpoint

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_digits):
    d = tmp_path_factory.mktemp("peers")
    cfg = tiny_digits(d, {"d": {"method": "diffem"}, "a": {"method": "ambient", "delta": 0.1}},
                      mstep={"steps": 2}, evaluate={"steps": 2})
    cfg["device"] = "cpu"
    return cfg, load_observations(d / "observations.h5")


def configs(cfg):
    """The config without a precision section, with the defaults written out, and with bf16."""
    out = {"absent": cfg}
    sections = {"none": {"autocast": "none", "tf32": True, "compile": False}, "bf16": {"autocast": "bf16"}}
    for name, section in sections.items():
        out[name] = {**copy.deepcopy(cfg), "precision": section}
    return out


@contextmanager
def layer_dtypes():
    """The output dtypes of every Linear / Conv2d forward while the block runs."""
    seen: set[torch.dtype] = set()

    def hook(module, args, out):
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            seen.add(out.dtype)

    handle = torch.nn.modules.module.register_module_forward_hook(hook)
    try:
        yield seen
    finally:
        handle.remove()


def test_diffem_conditional_model_trains_and_samples_in_bf16(setup):
    cfg, obs = setup
    x = torch.as_tensor(obs.y[:32], dtype=torch.float32)  # any images: what is checked is the precision
    parts, seen = {}, {}
    for name, c in configs(cfg).items():
        job = Job(c, "digits", "d", 2)
        method = make_method(c["experiments"]["digits"]["variants"]["d"], c["experiments"]["digits"])
        with layer_dtypes() as dtypes:
            parts[name], _ = method.conditional_mstep(job, x, None, None)
        seen[name] = set(dtypes)
    assert seen["absent"] == seen["none"] == {torch.float32} and torch.bfloat16 in seen["bf16"]
    for key, w in parts["absent"]["raw_weights"].items():
        assert torch.equal(w, parts["none"]["raw_weights"][key]), key
        assert parts["bf16"]["raw_weights"][key].dtype == torch.float32
    assert any(not torch.equal(w, parts["bf16"]["raw_weights"][k]) for k, w in parts["absent"]["raw_weights"].items())

    # the E-step's conditional denoiser, from a checkpoint (a Gaussian q_k carrying DiffEM's "conditional"
    # entry), as the job's precision runs it
    n = x[0].numel()
    ckpt = {"kind": "gaussian", "x_shape": list(obs.x_shape), "mean": torch.zeros(n), "U": torch.eye(n, 1),
            "s": torch.ones(1), "tau": 1.0, "conditional": parts["absent"]}
    gen = torch.Generator().manual_seed(0)
    x_t, sigma = torch.randn(4, *obs.x_shape, generator=gen), torch.full((4,), 0.5)
    sub = obs.subset(np.arange(4))
    cond = condition(sub.op, sub.y)
    outs = {}
    for name, c in configs(cfg).items():
        job = Job(c, "digits", "d", 2)
        method = make_method(c["experiments"]["digits"]["variants"]["d"], c["experiments"]["digits"])
        prior = prior_from_checkpoint(ckpt, device="cpu", precision=job.precision)
        with layer_dtypes() as dtypes:
            outs[name] = method.conditional(prior)(x_t, cond, sigma)
        assert outs[name].dtype == torch.float32
        assert set(dtypes) == ({torch.bfloat16} if name == "bf16" else {torch.float32}), name
    assert torch.equal(outs["absent"], outs["none"]) and not torch.equal(outs["absent"], outs["bf16"])


def test_ambient_network_trains_and_samples_in_bf16(setup, tmp_path):
    cfg, obs = setup
    ckpts, seen = {}, {}
    for name, c in configs(cfg).items():
        job = Job(c, "digits", "a", 1)
        method = make_method(c["experiments"]["digits"]["variants"]["a"], c["experiments"]["digits"])
        with layer_dtypes() as dtypes:
            ckpts[name], _ = method.mstep(job, obs.y, None, obs, str(tmp_path / f"{name}.resume.pt"))
        seen[name] = set(dtypes)
        prior = prior_from_checkpoint(ckpts["absent"], device="cpu", precision=job.precision)
        with layer_dtypes() as dtypes:
            samples = method.sample_prior(job, prior, 3, torch.Generator().manual_seed(1))
        assert samples.dtype == torch.float32 and samples.shape == (3, *obs.x_shape)
        assert set(dtypes) == ({torch.bfloat16} if name == "bf16" else {torch.float32}), name
    assert seen["absent"] == seen["none"] == {torch.float32} and torch.bfloat16 in seen["bf16"]
    for key, w in ckpts["absent"]["raw_weights"].items():
        assert torch.equal(w, ckpts["none"]["raw_weights"][key]), key
    assert any(not torch.equal(w, ckpts["bf16"]["raw_weights"][k]) for k, w in ckpts["absent"]["raw_weights"].items())

"""The ``precision`` section (emprior.core.precision): validated, carried into every job's config and its
provenance; bf16 autocast reaches the network only (its output and the MMPS solve stay float32); the
defaults leave training bit-identical; TF32 is set on CUDA jobs only; ``compile`` wraps the denoiser."""

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from emprior.config.loading import job_config, load_config
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.core.precision import Precision
from emprior.methods.stages import denoiser_mstep
from emprior.operators import make_operator
from emprior.posterior import make_posterior
from emprior.posterior import mmps as mmps_mod
from emprior.priors.checkpoint import prior_from_checkpoint

REPO = Path(__file__).resolve().parents[3]
SHAPE = (1, 8, 8)  # the tiny digits images


@pytest.fixture(scope="module")
def tiny():
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg["device"] = "cpu"
    cfg["experiments"]["digits"]["mstep"]["steps"] = 3
    return cfg


def with_precision(cfg, **section):
    out = copy.deepcopy(cfg)
    out["precision"] = section
    return out


def train(cfg, tmp_path, name):
    job = Job(cfg, "digits", "diem_tweedie", 1)
    x = torch.randn(64, *SHAPE, generator=torch.Generator().manual_seed(0))
    ckpt, _ = denoiser_mstep(job, x, None, str(tmp_path / f"{name}.resume.pt"))
    return job, ckpt


@pytest.mark.parametrize("section, pattern", [
    ({"autocast": "fp16"}, r"precision.autocast: 'fp16' is not one of \['none', 'bf16'\]"),
    ({"tf33": True}, r"unknown key 'tf33' at precision"),
    ({"compile": "yes"}, r"precision.compile: 'yes' is not of type 'boolean'"),
])
def test_bad_precision_is_one_line_naming_the_key(section, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_config(REPO / "config" / "tiny.yaml", overrides={"precision": section})
    assert "\n" not in str(exc.value)
    with pytest.raises(ConfigError, match="precision"):
        Precision.from_config({"precision": section})


def test_section_reaches_job_configs_and_provenance(tiny):
    assert Precision.from_config(tiny) == Precision("none", True, False)
    assert "precision" not in job_config(tiny, "digits", "diem_tweedie")  # absent: digests as before
    cfg = with_precision(tiny, autocast="bf16")
    assert job_config(cfg, "digits", "diem_tweedie")["precision"] == {"autocast": "bf16"}
    assert job_config(cfg)["precision"] == {"autocast": "bf16"}
    job = Job(cfg, "digits", "diem_tweedie", 1)
    assert job.precision == Precision("bf16", True, False)
    assert job.provenance("mstep")["precision"] == {"autocast": "bf16", "tf32": True, "compile": False}


def test_tf32_is_set_on_cuda_jobs_only(monkeypatch):
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    try:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        Precision().apply(torch.device("cpu"))
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
        Precision().apply(torch.device("cuda", 0))
        assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        # the job sets it when it chooses its device (here a pretended GPU: flags only, no tensor)
        import emprior.core.device as device_mod

        monkeypatch.setattr(device_mod, "select_device", lambda name: torch.device("cuda", 0))
        assert Job({"seed": 0, "precision": {"tf32": False}}).device.type == "cuda"
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def test_defaults_train_bit_identically_and_bf16_reaches_the_mstep(tiny, tmp_path):
    _, absent = train(tiny, tmp_path, "absent")
    _, explicit = train(with_precision(tiny, autocast="none", tf32=True, compile=False), tmp_path, "explicit")
    _, bf16 = train(with_precision(tiny, autocast="bf16"), tmp_path, "bf16")
    for key in absent["weights"]:
        assert torch.equal(absent["weights"][key], explicit["weights"][key]), key
        assert bf16["weights"][key].dtype == torch.float32
    assert absent["train"]["loss"] == explicit["train"]["loss"]
    changed = [k for k in absent["raw_weights"] if not torch.equal(absent["raw_weights"][k], bf16["raw_weights"][k])]
    assert changed  # the switch reached the M-step's network
    # 3 Adam steps from the same start: bf16 moves the weights by far less than the steps themselves
    assert np.allclose(absent["train"]["loss"], bf16["train"]["loss"], rtol=0.05)


def test_bf16_runs_the_network_and_the_solver_sees_float32(tiny, tmp_path, monkeypatch):
    _, ckpt = train(tiny, tmp_path, "net")
    op = make_operator("pixel_mask", 1, SHAPE, 1e-3, np.random.default_rng(0), deleted=0.75)
    g = torch.Generator().manual_seed(1)
    y = op.observe(torch.randn(1, *SHAPE, generator=g), generator=g)
    x_t = torch.randn(4, *SHAPE, generator=g)
    seen = {"layers": set(), "solver": set()}
    real_cg = mmps_mod.SOLVERS["cg"]

    def cg(matvec, b, **kw):
        mv = matvec(b)
        seen["solver"] |= {b.dtype, *(t.dtype for t in (mv if isinstance(mv, tuple) else (mv,)))}
        return real_cg(matvec, b, **kw)

    monkeypatch.setitem(mmps_mod.SOLVERS, "cg", cg)
    out = {}
    for name in ("none", "bf16"):
        prior = prior_from_checkpoint(ckpt, device="cpu", precision=Precision(autocast=name))
        seen["layers"] = set()
        for mod in prior.module.modules():
            if isinstance(mod, (torch.nn.Conv2d, torch.nn.Linear)):
                mod.register_forward_hook(lambda m, i, o: seen["layers"].add(o.dtype))
        assert prior.denoiser(x_t, torch.full((4,), 0.5)).dtype == torch.float32
        post = make_posterior("mmps", prior.denoiser, op, y, covariance="tweedie", maxiter=2)
        out[name] = post(x_t, torch.full((4,), 0.5))
        assert seen["layers"] == ({torch.bfloat16} if name == "bf16" else {torch.float32})
        assert seen["solver"] == {torch.float32} and out[name].dtype == torch.float32
    assert not torch.equal(out["none"], out["bf16"])
    assert (out["none"] - out["bf16"]).abs().max() < 0.05 * out["none"].abs().max()


def test_defaults_return_the_denoiser_itself_and_compile_wraps_it(tiny, tmp_path, monkeypatch):
    net = torch.nn.Linear(2, 2)
    assert Precision().wrap(net) is net
    compiled = Precision(compile=True).wrap(net)
    assert isinstance(compiled, torch._dynamo.eval_frame.OptimizedModule) and compiled._orig_mod is net
    x = torch.randn(3, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert net(x).dtype == torch.bfloat16  # a bare layer's output under autocast ...
    assert Precision(autocast="bf16").wrap(net)(x).dtype == torch.float32  # ... is cast back by the wrapper
    both = Precision(autocast="bf16", compile=True).wrap(net)
    assert both.fn._orig_mod is net and list(both.parameters()) == list(net.parameters())
    # the M-step and a loaded prior go through it (torch.compile recorded, not run: too slow on 2 cores)
    calls = []
    monkeypatch.setattr(torch, "compile", lambda m: calls.append(m) or m)
    job, ckpt = train(with_precision(tiny, compile=True), tmp_path, "compile")
    prior = prior_from_checkpoint(ckpt, precision=job.precision)
    assert len(calls) == 2 and calls[1] is prior.module and prior.denoiser is prior.module
    assert type(calls[0]).__name__ == "PreconditionedDenoiser"

"""The device layer: ``device: auto | cpu | cuda`` chosen once per job; models, tensors and generators
made on it; artifacts written from CPU tensors."""

import copy
from pathlib import Path

import pytest
import torch
import yaml
from torch.utils._python_dispatch import TorchDispatchMode

from emprior.core.device import select_device
from emprior.core.errors import ConfigError
from emprior.core.job import Job
from emprior.methods.stages import build_net

REPO = Path(__file__).resolve().parents[3]


def test_select_device(monkeypatch):
    assert select_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("auto") == torch.device("cpu") and select_device(None) == torch.device("cpu")
    with pytest.raises(ConfigError, match="device: 'cuda' asked for, but torch sees no CUDA device"):
        select_device("cuda")
    with pytest.raises(ConfigError, match="device: must be one of auto, cpu, cuda"):
        select_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert select_device("auto") == torch.device("cuda") and select_device("cuda:1") == torch.device("cuda:1")


def test_job_chooses_its_device_once_and_builds_on_it(monkeypatch):
    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    job = Job(dict(cfg, device="cpu"), "digits", "diem_tweedie", 1)
    assert job.device == torch.device("cpu") and job.generator("mstep").device == torch.device("cpu")
    calls = []
    import emprior.core.device as device_mod

    real = device_mod.select_device
    monkeypatch.setattr(device_mod, "select_device", lambda name: calls.append(name) or real(name))
    job = Job(dict(cfg, device="cpu"), "digits", "diem_tweedie", 1)
    for _ in range(3):
        _ = job.device
    assert calls == ["cpu"]
    # a model is built on the job's device, whatever that is (meta: no memory, any machine)
    job.__dict__["device"] = torch.device("meta")
    net = build_net(job, (1, 8, 8))
    assert {p.device.type for p in net.parameters()} == {"meta"}


class DeviceRecorder(TorchDispatchMode):
    """Every device a tensor op produced a tensor on."""

    def __init__(self):
        super().__init__()
        self.devices = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.devices.add(t.device.type)
        return out


def test_cpu_jobs_make_every_tensor_on_the_cpu(tmp_path):
    from emprior.pipeline import data, em, evaluate

    cfg = yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())
    cfg = dict(copy.deepcopy(cfg), device="cpu")
    cfg["experiments"]["digits"]["mstep"]["steps"] = 3
    d = tmp_path
    data.dataset(Job(cfg, "digits"), str(d / "clean.h5"))
    data.observe(Job(cfg, "digits"), str(d / "clean.h5"), str(d / "obs.h5"))
    em.init_prior(Job(cfg, "digits", "diem_tweedie"), str(d / "obs.h5"), str(d / "q0.pt"))
    rec = DeviceRecorder()
    with rec:
        job = Job(cfg, "digits", "diem_tweedie", 1)
        em.estep(job, 0, str(d / "q0.pt"), str(d / "obs.h5"), str(d / "shard_0.h5"))
        em.estep(job, 1, str(d / "q0.pt"), str(d / "obs.h5"), str(d / "shard_1.h5"))
        em.gather(job, str(d / "posterior.h5"), [str(d / "shard_0.h5"), str(d / "shard_1.h5")])
        em.mstep(job, str(d / "model.pt"), posterior=str(d / "posterior.h5"))
        evaluate.prior_samples(job, str(d / "model.pt"), str(d / "prior.h5"))
    assert rec.devices == {"cpu"}

"""Processor-independent arithmetic (emprior.core.reproducibility): the pins, their record in the
provenance, the audit of a run that mixes them, and the same bytes under two processors' dispatch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from emprior.core import reproducibility as rep
from emprior.core.errors import ConfigError
from emprior.evaluation.audit import arithmetic

REPO = Path(__file__).resolve().parents[3]


def test_default_is_portable_and_overrides_the_users_caps():
    env = {"ATEN_CPU_CAPABILITY": "avx512", "MKL_CBWR": "AUTO", "OTHER": "x"}
    set_ = rep.apply({}, env)
    assert set_ == rep.PORTABLE_PINS
    assert env == {**rep.PORTABLE_PINS, "OTHER": "x"}


def test_native_leaves_the_environment_alone_and_cuda_flag():
    env = {"ATEN_CPU_CAPABILITY": "avx512"}
    assert rep.apply({"reproducibility": {"cpu_dispatch": "native"}}, env) == {}
    assert env == {"ATEN_CPU_CAPABILITY": "avx512"}
    got = rep.pins({"reproducibility": {"cpu_dispatch": "native", "cuda_deterministic": True}})
    assert got == {"CUBLAS_WORKSPACE_CONFIG": ":4096:8"}


def test_bad_mode_is_one_line():
    with pytest.raises(ConfigError, match=r"reproducibility.cpu_dispatch: must be one of portable, native, got 'avx'"):
        rep.pins({"reproducibility": {"cpu_dispatch": "avx"}})


def test_launcher_pins_before_torch_and_records_it(tmp_path):
    """``python -m emprior`` reads --config and sets the pins before torch loads; the record says so."""
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"reproducibility": {"cpu_dispatch": "portable"}}))
    code = ("import sys; sys.argv = ['emprior', 'x', '--config', sys.argv[1]]\n"
            "from emprior.core.reproducibility import pin_from_argv, record\n"
            "pin_from_argv()\nimport torch, json\nprint(json.dumps(record()))")
    env = {k: v for k, v in os.environ.items() if k not in rep.WATCHED}
    env["PYTHONPATH"] = str(REPO / "src")
    out = subprocess.run([sys.executable, "-c", code, str(cfg)], capture_output=True, text=True, env=env, check=True)
    rec = json.loads(out.stdout)
    assert rec["pins_in_force"] is True and rec["cpu_dispatch"] == "portable"
    assert rec["aten_capability"] == "AVX2"  # ATen reports what it dispatched to
    assert rec["env"] == {**rep.PORTABLE_PINS}
    assert rec["processor"]["model"] != ""


def test_audit_flags_mixed_arithmetic(tmp_path):
    def sidecar(name, arith):
        p = tmp_path / "exp" / f"{name}.prov.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        rec = {"sha256": "0", "provenance": {"rule": "x"}}
        if arith is not None:
            rec["arithmetic"] = arith
        p.write_text(json.dumps(rec))

    portable = {"processor": {"model": "A"}, "cpu_dispatch": "portable", "pins_in_force": True, "aten_capability": "AVX2"}
    sidecar("a", portable)
    sidecar("b", {**portable, "processor": {"model": "B"}})  # another processor, pinned: same bytes
    assert len(arithmetic(tmp_path)) == 1
    sidecar("c", {"processor": {"model": "B"}, "cpu_dispatch": "native", "pins_in_force": True,
                  "aten_capability": "AVX512"})
    sidecar("d", None)
    df = arithmetic(tmp_path)
    assert sorted(df["dispatch"]) == ["(not recorded)", "native", "portable"]
    assert int(df[df["dispatch"] == "portable"]["artifacts"].iloc[0]) == 2


def _has_avx512() -> bool:
    return rep.processor()["isa"] == "avx512"


# An AVX2 processor, emulated on an AVX-512 one: each library capped where it reads its caps.
AVX2_MACHINE = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}


@pytest.mark.slow
@pytest.mark.skipif(not _has_avx512(), reason="emulating another processor needs an AVX-512 machine "
                                              "(its dispatch capped to AVX2); this one has none")
def test_same_bytes_on_two_processors_only_with_the_pins(tmp_path, tiny_digits):
    """An M-step and the next E-step run in a fresh process the way ``python -m emprior`` starts one (pins
    from the --config before torch loads), under this machine's native dispatch and under an emulated
    AVX2 machine: identical bytes with the default pins; different with ``cpu_dispatch: native``
    (ATen's and oneDNN's AVX-512 kernels round otherwise)."""
    from emprior.core.job import Job
    from emprior.pipeline import em

    variant = {"method": "diem", "posterior": {"method": "mmps", "covariance": "tweedie", "solver": "cg", "maxiter": 1}}
    cfg = tiny_digits(tmp_path, {"v": variant}, estep={"shards": 1}, mstep={"steps": 8})
    cfg["experiments"]["digits"]["iterations"] = 2
    obs = str(tmp_path / "observations.h5")
    em.init_prior(Job(cfg, "digits", "v"), obs, str(tmp_path / "m0.pt"))
    em.estep(Job(cfg, "digits", "v", 1), 0, str(tmp_path / "m0.pt"), obs, str(tmp_path / "s0.h5"))
    em.gather(Job(cfg, "digits", "v", 1), str(tmp_path / "post.h5"), [str(tmp_path / "s0.h5")])
    base = {k: v for k, v in os.environ.items() if k not in rep.WATCHED}
    base["PYTHONPATH"] = str(REPO / "src")
    # the launcher's two steps (emprior/__main__.py), then both commands in the same process
    driver = ("import sys\nfrom emprior.core.reproducibility import pin_from_argv\npin_from_argv(sys.argv[1:3])\n"
              "from emprior.pipeline.cli import main\n"
              "assert main(['mstep', *sys.argv[1:3], *sys.argv[3].split()]) == 0\n"
              "assert main(['estep', *sys.argv[1:3], *sys.argv[4].split()]) == 0\n")
    ids = "--experiment digits --variant v"

    def run(mode: str, env: dict[str, str]) -> tuple[dict[str, torch.Tensor], np.ndarray]:
        out = tmp_path / f"{mode}_{'avx2' if env else 'native'}"
        out.mkdir()
        conf = tmp_path / f"{mode}.json"
        conf.write_text(json.dumps({**cfg, "reproducibility": {"cpu_dispatch": mode}}))
        mstep = f"{ids} --iteration 1 --posterior {tmp_path / 'post.h5'} --out {out / 'm1.pt'}"
        estep = f"{ids} --iteration 2 --shard 0 --model {out / 'm1.pt'} --observations {obs} --out {out / 's.h5'}"
        res = subprocess.run([sys.executable, "-c", driver, "--config", str(conf), mstep, estep],
                             capture_output=True, text=True, env={**base, **env})
        assert res.returncode == 0, res.stderr[-2000:]
        weights = torch.load(out / "m1.pt", weights_only=True)["weights"]
        with h5py.File(out / "s.h5") as f:
            return weights, f["x"][()]

    def same(a, b) -> bool:
        return all(torch.equal(a[0][k], b[0][k]) for k in a[0]) and a[1].tobytes() == b[1].tobytes()

    assert same(run("portable", {}), run("portable", AVX2_MACHINE))
    assert not same(run("native", {}), run("native", AVX2_MACHINE))

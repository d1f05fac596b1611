"""Table 5 (emprior.studies.sampler_cost): it runs on a tiny U-Net and writes sane columns.

This is a benchmark, not a test of speed: only what must hold on any machine is asserted (VJP counts,
DPS ratios exactly 1, positive ratios, the memory instrument reading a known allocation).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
import torch

from emprior.studies import sampler_cost as cb
from emprior.core.errors import ConfigError

TINY = {
    "denoiser": {"net": "unet", "hid_channels": [8, 16], "hid_blocks": [1, 1], "attention_heads": [0, 2],
                 "dropout": 0.0, "emb_features": 16},
    "x_shape": [1, 16, 16],
    "batch_size": 16,
    "task": {"operator": "pixel_mask", "options": {"deleted": 0.5}, "noise_std": 0.1},
    "schedule": {"sigma_min": 1e-3, "sigma_max": 100.0},
    "steps": 2,
    "warmup": 1,
    "repeats": 2,
}

# VJPs per step. MMPS (k) with the Tweedie covariance: k GMRES matvecs; the paper's k + 1 includes a
# separate VJP for the final J^T A^T v, which emprior accumulates from the solver's products.
EXPECTED_VJPS = {"DiffPIR": 0, "DPS": 1, "GDM": 1, "TMPD": 2, "MMPS (1)": 1, "MMPS (3)": 3, "MMPS (5)": 5}


def test_vjps_per_step():
    cfg = cb.check_config({**TINY, "memory": False})
    setup = cb.Setup(cfg, 0)
    res = cb.time_methods(setup, cfg["methods"], steps=2, warmup=0, repeats=1)
    assert {k: v["vjps_per_step"] for k, v in res.items()} == EXPECTED_VJPS
    assert all(v["seconds"] > 0 and len(v["all"]) == 1 for v in res.values())


def test_zero_initialised_layers_are_redrawn():
    """A fresh net is x_t/(sigma^2+1) (scalar Jacobian): the benchmark net must not be."""
    cfg = cb.check_config({**TINY, "memory": False})
    setup = cb.Setup(cfg, 0)
    x = torch.randn(2, 1, 16, 16)
    out = setup.denoiser(x, torch.full((2,), 0.5))
    assert not torch.allclose(out, x / 1.25, atol=1e-3)


def test_memory_instrument_reads_a_known_allocation():
    """VmHWM after a reset minus VmRSS before sees a 64 MiB tensor that was filled then freed. In a fresh
    process, as Table 5 measures it: in a long test session the allocator may hand back pages that are
    already resident."""
    if cb._status_kb("VmRSS") is None or not cb._reset_hwm():
        pytest.skip("no /proc/self/status or clear_refs on this system")
    code = ("import torch; from emprior.studies import sampler_cost as cb; rss0 = cb._status_kb('VmRSS'); "
            "assert cb._reset_hwm(); t = torch.empty(16 * 2**20, dtype=torch.float32).fill_(1.0); del t; "
            "print((cb._status_kb('VmHWM') - rss0) / 1024)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    grown_mb = float(out.stdout.strip().splitlines()[-1])
    assert 63 <= grown_mb < 70  # 64 MiB, give or take pages the allocator returns or touches


def test_main_writes_table5(tmp_path):
    cfg = {**TINY, "memory": True,
           "methods": {"DiffPIR": {"method": "diffpir", "lam": 1.0}, "DPS": {"method": "dps", "zeta": 1.0},
                       "MMPS (3)": {"method": "mmps", "covariance": "tweedie", "solver": "gmres",
                                    "maxiter": 3}}}
    out_csv, out_md = tmp_path / "table5.csv", tmp_path / "table5.md"
    cb.main(cfg, 0, str(out_csv), str(out_md), {"rule": "table5"})
    df = pd.read_csv(out_csv).set_index("method")
    assert list(df.index) == ["DiffPIR", "DPS", "MMPS (3)"]
    assert list(df.reset_index().columns) == cb.COLUMNS
    assert df.loc["DPS", "time_ratio"] == 1.0 and df.loc["DPS", "memory_ratio"] == 1.0
    assert (df.time_ratio > 0).all() and (df.memory_ratio > 0).all() and (df.peak_mb > 0).all()
    assert df.vjps_per_step.to_dict() == {"DiffPIR": 0.0, "DPS": 1.0, "MMPS (3)": 3.0}
    assert df.paper_vjps.to_dict() == {"DiffPIR": 0.0, "DPS": 1.0, "MMPS (3)": 4.0}
    assert df.loc["MMPS (3)", "paper_time_ratio"] == pytest.approx(90.1 / 40.5)
    assert df.loc["DiffPIR", "paper_memory_ratio"] == pytest.approx(0.66 / 2.29)
    # 3 VJPs + 1 forward cost more than 1 VJP + 1 forward; robust even on a loaded machine
    assert df.loc["MMPS (3)", "time_ratio"] > 1.2
    assert set(df.memory_method) <= {"vmhwm", "ru_maxrss"}
    md = out_md.read_text()
    assert "| DPS | 1.0 |" in md and "median over 2 interleaved repeats" in md
    side = json.loads((tmp_path / "table5.csv.prov.json").read_text())
    assert side["provenance"]["rule"] == "table5"
    assert len(side["runtime"]["step_seconds"]["DPS"]) == 2


@pytest.mark.parametrize("patch, needle", [
    ({"methods": {"MMPS (1)": {"method": "mmps"}}}, "must include 'DPS'"),
    ({"x_shape": [8, 8]}, "x_shape"),
    ({"batch_size": 0}, "batch_size"),
    ({"memory": "yes"}, "memory"),
    ({"speed": 1}, "'speed'"),
])
def test_bad_config_names_the_key(patch, needle):
    with pytest.raises(ConfigError) as exc:
        cb.check_config({**TINY, **patch})
    assert needle in str(exc.value) and "\n" not in str(exc.value)

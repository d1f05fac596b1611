"""FFHQ Table 4 protocol: loader + manifest on generated PNGs, the four task operators, cells, n/a gather."""

import hashlib

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from emprior.config.loading import load_config
from emprior.core.errors import ConfigError
from emprior.data.ffhq import load_ffhq
from emprior.operators.blur import dps_motion_kernel
from emprior.studies import ffhq_table4 as study

METHODS = {"DPS": {"method": "dps", "zeta": 0.5}, "MMPS (3)": {"method": "mmps", "maxiter": 3}}


@pytest.fixture(scope="module")
def ffhq_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("ffhq")
    rng = np.random.default_rng(0)
    for i in (3, 0, 1, 2):  # written out of order: the loader sorts by name
        Image.fromarray(rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)).save(d / f"{i:05d}.png")
    return d


def test_loader_first_by_name_in_range_and_manifest(ffhq_dir):
    x = load_ffhq(ffhq_dir, n=3)
    assert x.shape == (3, 3, 256, 256) and x.min() >= -1 and x.max() <= 1
    first = np.asarray(Image.open(ffhq_dir / "00000.png"), dtype=np.float32).transpose(2, 0, 1)
    np.testing.assert_allclose(x[0], first * 2 / 255 - 1, atol=1e-6)
    man = study.image_manifest(ffhq_dir, 3)
    assert [m["name"] for m in man] == ["00000.png", "00001.png", "00002.png"]
    assert man[1]["sha256"] == hashlib.sha256((ffhq_dir / "00001.png").read_bytes()).hexdigest()


@pytest.mark.parametrize("task", list(study.TASKS))
def test_task_operators_adjoint_and_shapes(ffhq_dir, task):
    cfg = study.check_config({"methods": METHODS})
    x = torch.from_numpy(load_ffhq(ffhq_dir, n=2)).double()
    op, y = study.observations(cfg, task, x, seed=0)
    op2, y2 = study.observations(cfg, task, x, seed=0)
    assert torch.equal(y, y2)  # the same observations for every method and step count
    u = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    v = torch.randn(y.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    lhs, rhs = (op.A(u) * v).sum(), (u * op.At(v)).sum()
    assert abs(float(lhs - rhs)) < 1e-9 * float(u.norm() * v.norm())
    if task == "box_inpainting":
        m = op.A(torch.ones_like(x))
        for i in range(2):
            rows, cols = torch.nonzero(m[i, 0] == 0, as_tuple=True)
            assert len(rows) == 128 * 128 and rows.max() - rows.min() == 127 and cols.max() - cols.min() == 127
            assert rows.min() >= 16 and rows.max() < 256 - 16  # DPS's margin
    if task == "random_inpainting":
        deleted = float((op.A(torch.ones_like(x))[:, 0] == 0).double().mean())
        assert abs(deleted - 0.98) < 4 * np.sqrt(0.98 * 0.02 / (2 * 256 * 256))
    if task == "super_resolution":
        assert y.shape == (2, 3, 64, 64)
        torch.testing.assert_close(op.A(torch.ones_like(x)), torch.ones_like(y))  # rows sum to 1
    if task == "motion_deblur":
        k = op._params["kernel"]
        assert k.shape == (2, 61, 61) and not np.allclose(k[0], k[1])
        # DPS's operator: nn.Conv2d (a correlation) of the reflect-padded image with the generated kernel
        w = torch.from_numpy(k[0, ::-1, ::-1].copy()).expand(3, 1, 61, 61)
        padded = torch.nn.functional.pad(u[:1], (30,) * 4, mode="reflect")[..., :40 + 60, 200:256 + 60]
        dps = torch.nn.functional.conv2d(padded, w, groups=3)  # output rows 0-39, cols 200-255 (two borders)
        torch.testing.assert_close(op.A(u)[:1, :, :40, 200:], dps, rtol=0, atol=1e-12)


def test_dps_motion_kernel_sums_to_one_with_requested_size():
    for size, seed in ((61, 0), (55, 7)):
        k = dps_motion_kernel(size, 0.5, seed)
        assert k.shape == (size, size) and k.min() >= 0 and abs(k.sum() - 1) < 1e-6
        assert np.array_equal(k, dps_motion_kernel(size, 0.5, seed))
        assert not np.array_equal(k, dps_motion_kernel(size, 0.5, seed + 1))
    with pytest.raises(ValueError, match="size 31 < 54 draws no path"):
        dps_motion_kernel(31, 0.5, 0)


def test_paper_config_has_84_cells_and_1000_steps_sharded():
    cfg = study.check_config(load_config("config/paper.yaml")["ffhq_benchmark"])
    cells = study.cells(cfg)
    assert len({(c["task"], c["method"], c["steps"]) for c in cells}) == 84
    assert {c["shards"] for c in cells if c["steps"] == 1000} == {4} and len(cells) == 56 + 28 * 4
    idx = [study.shard_indices(100, k, 4) for k in range(4)]
    assert np.array_equal(np.concatenate(idx), np.arange(100))
    assert study.cell_name("MMPS (3)") == "MMPS_3"
    with pytest.raises(ConfigError, match="ffhq_benchmark: unknown key 'chekpoint'"):
        study.check_config({"methods": METHODS, "chekpoint": "x"})


def test_gather_without_checkpoint_writes_na_and_why(tmp_path):
    cfg = {"methods": METHODS, "steps": [10]}
    out = [tmp_path / f for f in ("t.csv", "t.md", "t.tex", "i.csv")]
    df = study.gather(cfg, [], 0, *map(str, out), provenance={"rule": "table4_ffhq"})
    assert len(df) == 4 * 2 and df["lpips"].isna().all()
    assert df["status"].str.contains("ffhq_benchmark.checkpoint is not set").all()
    assert "ffhq_benchmark.checkpoint is not set" in out[1].read_text() and "n/a" in out[1].read_text()
    paper = pd.read_csv(out[0])
    assert paper.loc[(paper.method == "DPS") & (paper.task == "box_inpainting"), "paper_lpips"].notna().all()


def test_run_cell_on_a_small_adm_and_score(ffhq_dir, tmp_path, monkeypatch):
    """One cell end to end on CPU: a small random ADM stands in for ffhq_10m.pt (the real one is not here)."""
    import emprior.nets.adm as adm

    small = adm.adm_config(image_size=32, model_channels=32, channel_mult=(1, 1, 1), attention_resolutions=(8,),
                           num_head_channels=32)
    torch.manual_seed(0)
    net = adm.ADMUNet(small)
    with torch.no_grad():
        for p in net.out.parameters():
            p.normal_(0, 0.01)
    ck = tmp_path / "ck.pt"
    torch.save(net.state_dict(), ck)
    load = adm.load_guided_diffusion
    monkeypatch.setattr(adm, "load_guided_diffusion", lambda path, **kw: load(path, cfg=small, **kw))
    cfg = {"checkpoint": str(ck), "images": str(ffhq_dir), "n_images": 3, "image_size": 32, "steps": [3], "shards": {3: 2},
           "batch_size": 2, "methods": METHODS,
           "tasks": {"random_inpainting": {"operator": "pixel_mask", "options": {"deleted": 0.9}, "noise_std": 0.1}}}
    out = study.run_cell(cfg, 0, "random_inpainting", "DPS", 3, 0, device="cpu")
    again = study.run_cell(cfg, 0, "random_inpainting", "DPS", 3, 0, device="cpu")
    other = study.run_cell(cfg, 0, "random_inpainting", "MMPS (3)", 3, 1, device="cpu")
    assert list(out["index"]) == [0, 1] and out["samples"].shape == (2, 3, 32, 32) and list(other["index"]) == [2]
    assert np.array_equal(out["samples"], again["samples"]) and np.abs(out["samples"]).max() <= 1
    df = study.score(out["samples"], load_ffhq(ffhq_dir, n=2, size=32), None)
    assert df["psnr"].between(0, 60).all() and df["ssim"].between(-1, 1).all() and df["lpips"].isna().all()
    # the gather reads cell files as the ffhq-cell command writes them
    from emprior.core.artifacts import save_h5

    files = []
    for name, res, method in (("a.h5", out, "DPS"), ("b.h5", other, "MMPS (3)")):
        save_h5(tmp_path / name, {"samples": res["samples"], "index": res["index"]},
                attrs={"task": "random_inpainting", "method": method, "steps": 3, "shard": 0})
        files.append(str(tmp_path / name))
    paths = [tmp_path / f for f in ("t.csv", "t.md", "t.tex", "i.csv")]
    table = study.gather(cfg, files, 0, *map(str, paths))
    per = pd.read_csv(paths[3])
    assert len(per) == 3 and set(per["method"]) == {"DPS", "MMPS (3)"}
    assert table.loc[table.method == "DPS", "psnr"].item() == pytest.approx(df["psnr"].mean())
    assert (table["status"] == "ok").all()
    pngs = study.figures(cfg, files, 0, str(tmp_path / "fig"))
    assert [p.name for p in pngs] == ["table4_ffhq_random_inpainting.png"] and pngs[0].stat().st_size > 1000

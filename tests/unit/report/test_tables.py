"""Table 1 from metrics.json records: final iteration per variant, paper numbers, iteration-1 E-step check."""

import pandas as pd
import pytest

from emprior.core.artifacts import save_json
from emprior.report.tables import table1_frame

CONFIG = {"experiments": {"digits": {
    "dataset": {"name": "digits"}, "observation": {"operator": "pixel_mask", "options": {"deleted": 0.75}},
    "variants": {"diem_tweedie": {"method": "diem", "posterior": {"method": "mmps", "covariance": "tweedie"}},
                 "diem_sigma_t": {"method": "diem", "posterior": {"method": "mmps", "covariance": "sigma_t"}}}}}}


def _metrics(tmp_path, variant, k, sinkhorn, check=None):
    rec = {"experiment": "digits", "variant": variant, "iteration": k, "quality": {"sinkhorn": sinkhorn}}
    if check:
        rec["estep_check"] = check
    return str(save_json(tmp_path / variant / f"iter_{k:03d}" / "metrics.json", rec, {"rule": "iteration_metrics"}))


def test_table1_takes_the_final_iteration_and_the_iteration_one_check(tmp_path):
    paths = [_metrics(tmp_path, "diem_tweedie", 3, 19.5),
             _metrics(tmp_path, "diem_tweedie", 1, 24.6, {"bias2": 0.0225, "spread": 0.82}),
             _metrics(tmp_path, "diem_sigma_t", 3, 28.7)]
    df = table1_frame(CONFIG, paths)
    ours = df[df.method == "DiEM"].set_index("covariance")
    assert list(ours.index) == ["tweedie", "Sigma_t"]
    tw, st = ours.loc["tweedie"], ours.loc["Sigma_t"]
    assert tw.iterations == 3 and tw.sinkhorn == 19.5 and tw.paper_fid == 13.18 and tw.paper_deleted == 0.75
    assert tw.estep_bias2_it1 == 0.0225 and tw.estep_spread_it1 == 0.82
    assert st.sinkhorn == 28.7 and st.paper_fid == 118.69 and pd.isna(st.estep_bias2_it1)
    assert set(df[df.method != "DiEM"].method) == {"AmbientDiffusion", "EMDiffusion"}
    assert (df[df.method != "DiEM"].fid_status == "published; not run at this setting").all()


def test_table1_has_one_row_per_method_with_its_clean_data_and_published_number(tmp_path):
    exp = {"dataset": {"name": "digits", "n": 1000},
           "observation": {"operator": "pixel_mask", "options": {"deleted": 0.6}},
           "variants": {"diem_tweedie": {"method": "diem", "posterior": {"method": "mmps", "covariance": "tweedie"}},
                        "emdiffusion": {"method": "emdiffusion", "clean_subset": 50},
                        "diffem": {"method": "diffem"}, "ambient": {"method": "ambient"}}}
    config = {"experiments": {"digits": exp}}
    paths = [_metrics(tmp_path, v, 3, s) for v, s in
             (("diem_tweedie", 19.5), ("emdiffusion", 21.0), ("diffem", 25.0), ("ambient", 30.0))]
    df = table1_frame(config, paths)
    ours = df[df.variant.notna()].set_index("variant")
    assert list(ours.method) == ["DiEM", "EMDiffusion", "DiffEM", "AmbientDiffusion"]
    assert list(ours.clean_data) == [0, 50, 0, 0]
    assert ours.loc["emdiffusion"].paper_fid == 21.08 and ours.loc["ambient"].paper_fid == 28.88
    assert pd.isna(ours.loc["diffem"].paper_fid)  # no published number at this setting
    assert ours.loc["diem_tweedie"].covariance == "tweedie" and pd.isna(ours.loc["ambient"].covariance)
    assert ours.loc["ambient"].sinkhorn == 30.0


def _seeded_metrics(tmp_path, seed, variant, k, sinkhorn, fd=None):
    rec = {"experiment": "digits", "variant": variant, "iteration": k,
           "quality": {"sinkhorn": sinkhorn, "fd_digits": fd}}
    path = tmp_path / f"seed_{seed}" / variant / f"iter_{k:03d}" / "metrics.json"
    return str(save_json(path, rec, {"rule": "iteration_metrics", "seed": seed}))


def test_one_seed_gives_that_runs_numbers_and_q0_beside_the_final_one(tmp_path):
    paths = [_seeded_metrics(tmp_path, 0, "diem_tweedie", k, s, fd) for k, s, fd in
             ((3, 19.56, 15.08), (1, 24.6, 18.0), (0, 34.3, 16.1))]
    row = table1_frame(CONFIG, paths).iloc[0]
    assert row.seeds == 1 and row.iterations == 3 and row.q0_iteration == 0
    assert row.sinkhorn == 19.56 and row.fd_digits == 15.08 and row.q0_sinkhorn == 34.3 and row.q0_fd_digits == 16.1
    assert pd.isna(row.sinkhorn_ci95) and pd.isna(row.q0_sinkhorn_ci95)  # one seed: no interval
    assert row.sinkhorn_per_seed == "19.56" and row.fid_per_seed == "n/a"


def test_several_seeds_give_mean_t_interval_and_each_value(tmp_path):
    paths = [_seeded_metrics(tmp_path, seed, v, k, s) for seed, v, k, s in
             ((1, "diem_tweedie", 2, 12.0), (0, "diem_tweedie", 2, 10.0), (2, "diem_tweedie", 2, 11.0),
              (0, "diem_tweedie", 0, 30.0), (1, "diem_tweedie", 0, 34.0), (2, "diem_tweedie", 0, 32.0),
              (0, "diem_sigma_t", 2, 20.0), (1, "diem_sigma_t", 2, 24.0),
              (0, "diem_sigma_t", 0, 31.0), (1, "diem_sigma_t", 0, 33.0))]
    df = table1_frame(CONFIG, paths)
    ours = df[df.method == "DiEM"].set_index("variant")
    tw, st = ours.loc["diem_tweedie"], ours.loc["diem_sigma_t"]
    t2, t1 = 4.302652729911275, 12.706204736174707  # t_{0.975,2}, t_{0.975,1}
    assert tw.seeds == 3 and tw.sinkhorn == 11.0 and tw.sinkhorn_ci95 == pytest.approx(t2 / 3**0.5)  # s = 1
    assert tw.sinkhorn_per_seed == "10; 12; 11"  # seeds 0, 1, 2
    assert tw.q0_sinkhorn == 32.0 and tw.q0_sinkhorn_ci95 == pytest.approx(t2 * 2 / 3**0.5)  # s = 2
    assert st.seeds == 2 and st.sinkhorn == 22.0 and st.sinkhorn_ci95 == pytest.approx(t1 * 2**0.5 * 2 / 2**0.5)
    assert pd.isna(tw.fd_digits) and tw.fd_digits_per_seed == "n/a"


def test_fig4_draws_the_mean_over_seeds_and_its_t_band(tmp_path, monkeypatch):
    import numpy as np
    from matplotlib.collections import PolyCollection

    from emprior.report import tables

    paths = [_seeded_metrics(tmp_path, seed, "diem_tweedie", k, s) for seed, k, s in
             ((0, 0, 30.0), (1, 0, 34.0), (0, 1, 10.0), (1, 1, 12.0))]
    drawn = {}
    monkeypatch.setattr(tables, "save_figure", lambda out, fig, prov, **kw: drawn.setdefault("fig", fig))
    tables.metric_curves(CONFIG, "digits", paths, str(tmp_path / "fig4.png"), {}, quality_only=True)
    ax = drawn["fig"].axes[0]
    line = ax.get_lines()[0]
    assert list(line.get_xdata()) == [0, 1] and list(line.get_ydata()) == [32.0, 11.0]  # the means
    band = [c for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(band) == 1
    y = band[0].get_paths()[0].vertices[:, 1]
    t1 = 12.706204736174707  # two seeds: half-width t_{0.975,1} s / sqrt(2), s = |a - b| / sqrt(2)
    assert y.max() == pytest.approx(32.0 + t1 * 2.0) and y.min() == pytest.approx(11.0 - t1 * 1.0)
    assert "2 seeds" in drawn["fig"]._suptitle.get_text() and np.isfinite(y).all()

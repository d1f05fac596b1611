"""Table 1 from metrics.json records: final iteration per variant, paper numbers, iteration-1 E-step check."""

import pandas as pd

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

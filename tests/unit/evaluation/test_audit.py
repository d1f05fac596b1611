"""`python -m emprior audit`: one row per iteration, anomalies flagged."""

import re

import numpy as np
import torch

from emprior.core.artifacts import save_h5, save_json, save_torch
from emprior.evaluation.audit import audit, audit_rows


def _iteration(root, k, estep=None, quality=None, shards=2, keep_shards=2, check=None, experiment="exp"):
    d = root / experiment / "var" / f"iter_{k:03d}"
    save_torch(d / "model.pt", {"kind": "denoiser", "w": torch.ones(2)})
    save_h5(d / "prior_samples.h5", {"x": np.zeros((4, 2))})
    rec = {"iteration": k, "quality": quality or {"sinkhorn": 0.5}}
    if k:
        save_h5(d / "posterior.h5", {"x": np.zeros((4, 2))})
        for j in range(keep_shards):
            save_h5(d / "posterior" / f"shard_{j}.h5", {"x": np.zeros((2, 2))})
        rec["estep"] = {"residual_ratio_mean": 1.1, "breakdown_fraction": 0.0, "solver": {"breakdowns": 0},
                        "shards": [{"file": f"shard_{j}.h5"} for j in range(shards)], **(estep or {})}
    if check:
        rec["estep_check"] = check
    save_json(d / "metrics.json", rec)
    return d


def test_clean_run_has_no_flags(tmp_path):
    _iteration(tmp_path, 0)
    _iteration(tmp_path, 1)
    text, status = audit(tmp_path)
    assert status == 0 and "2 iterations, 0 flagged" in text
    assert "exact posterior" not in text  # no iteration-1 check recorded: no section


def test_iteration_one_check_is_listed_after_the_rows(tmp_path):
    _iteration(tmp_path, 0)
    _iteration(tmp_path, 1, check={"spread": 0.8187, "spread_se": 0.009, "bias2": 0.02251, "bias2_se": 0.0036,
                                   "observations": 64, "repeats": 16})
    text, status = audit(tmp_path)
    assert status == 0
    head, section = text.split("exact posterior under q_0")
    assert "2 iterations, 0 flagged" in head
    row = [line.split() for line in section.splitlines() if line.strip().startswith("exp ")]
    assert row == [["exp", "var", "0.8187", "0.009", "0.02251", "0.0036", "64", "16"]]


def test_lossy_sample_storage_is_shown(tmp_path):
    from emprior.core.storage import Storage

    _iteration(tmp_path, 0)
    d = _iteration(tmp_path, 1)
    save_h5(d / "prior_samples.h5", {"x": np.zeros((4, 2))}, provenance={"rule": "prior_samples"},
            storage=Storage(dtype="float16"), samples=("x",))
    df = audit_rows(tmp_path).set_index("iteration")
    assert df.loc[1, "lossy_samples"] == "float16 (prior_samples.h5)" and df.loc[1, "flags"] == "ok"
    assert df.loc[0, "lossy_samples"] != df.loc[0, "lossy_samples"]  # NaN: stored lossless
    _iteration(tmp_path / "lossless", 1)
    assert "lossy_samples" not in audit_rows(tmp_path / "lossless").columns  # default: audit output unchanged


def test_anomalies_are_flagged(tmp_path):
    _iteration(tmp_path, 0, quality={"sinkhorn": None, "error": "non-finite prior samples"})
    _iteration(tmp_path, 1, estep={"residual_ratio_mean": 250.0, "residual_ratio_q": {"0.1": 0.2, "0.5": 0.9}})
    _iteration(tmp_path, 2, keep_shards=1)
    _iteration(tmp_path, 3, estep={"breakdown_fraction": 0.2, "solver": {"breakdowns": 960}})
    d4 = _iteration(tmp_path, 4)
    (d4 / "model.pt").write_bytes(b"tampered")
    df = audit_rows(tmp_path).set_index("iteration")
    assert "NaN/Inf" in df.loc[0, "flags"]
    assert "residual blow-up (250" in df.loc[1, "flags"]
    assert df.loc[1, "residual_median"] == 0.9 and df.loc[3, "breakdown_pct"] == 20.0
    assert np.isnan(df.loc[0, "residual_median"])  # iteration 0 has no E-step
    assert "missing shard (1/2 on disk)" in df.loc[2, "flags"]
    assert "solver breakdowns in 20.0 % of solves" in df.loc[3, "flags"]
    assert "bad model.pt" in df.loc[4, "flags"] and "checksum mismatch" in df.loc[4, "flags"]
    text, status = audit(tmp_path)
    assert status == 1 and "5 iterations, 5 flagged" in text


def test_iterations_left_out_by_evaluate_iterations_are_not_flagged(tmp_path):
    _iteration(tmp_path, 0)
    d1 = _iteration(tmp_path, 1)
    d2 = _iteration(tmp_path, 2)
    for d in (d1, d2):  # evaluate.iterations: [0]; the final one (2) is always evaluated, so its loss is a flag
        for name in ("prior_samples.h5", "metrics.json"):
            (d / name).unlink()
            (d / f"{name}.prov.json").unlink()
    df = audit_rows(tmp_path).set_index("iteration")
    assert df.loc[1, "flags"] == "ok" and df.loc[1, "evaluated"] == False  # noqa: E712
    assert df.loc[2, "flags"] == "missing prior_samples.h5; missing metrics.json"
    assert df.loc[0, "flags"] == "ok"


def test_every_sidecar_artifact_is_checked_and_repair_removes_the_damaged(tmp_path):
    """Presence, size and checksum of every artifact with a sidecar (data, shards, tables, figures...),
    a file without its sidecar, n/a with its reason, exit statuses; repair removes exactly the flagged."""
    from emprior.core.artifacts import save_json
    from emprior.evaluation.repair import repair

    _iteration(tmp_path, 1, estep={"residual_ratio_mean": 1.0})
    for rel in ("exp/data/observations.h5", "exp/var/iter_001/posterior/shard_5.h5", "tables/table1.csv",
                "figures/fig4.png", "exp/data/clean.h5"):
        save_json(tmp_path / rel, {"x": rel}, {"rule": "r"})
    text, status = audit(tmp_path)
    assert status == 0 and "every artifact with a sidecar is present" in text, text
    assert "fid: evaluate.fid is off" in text and "None" not in text
    obs = tmp_path / "exp/data/observations.h5"
    obs.write_bytes(obs.read_bytes()[:-3])                                   # truncated
    shard = tmp_path / "exp/var/iter_001/posterior/shard_5.h5"
    data = bytearray(shard.read_bytes())
    data[3] ^= 1
    shard.write_bytes(bytes(data))                                           # one bit flipped
    (tmp_path / "tables/table1.csv").unlink()                                # deleted
    (tmp_path / "figures/fig5.png").write_bytes(b"png")                      # no sidecar
    text, status = audit(tmp_path)
    assert status == 1, text
    flagged = text[text.index("FLAG files"):]
    assert "exp/data/observations.h5" in flagged and "truncated" in flagged
    assert re.search(r"exp/var/iter_001/posterior/shard_5.h5 +checksum mismatch", flagged), flagged
    assert "tables/table1.csv" in flagged and "missing" in flagged
    assert "figures/fig5.png" in flagged and "no sidecar" in flagged
    assert "exp/data/clean.h5" not in flagged
    out, status = repair(tmp_path)
    assert status == 0 and out.count("removed ") == 4, out
    assert not obs.exists() and not shard.exists() and (tmp_path / "exp/data/clean.h5").exists()
    assert "FLAG files" not in audit(tmp_path)[0]


def test_unreadable_folder_is_exit_2(tmp_path):
    assert audit(tmp_path / "nope")[1] == 2
    assert audit(tmp_path)[1] == 2


def test_each_seed_branch_has_its_rows(tmp_path):
    # several seeds: <results>/<experiment>/seed_<s>/<variant>/iter_k (emprior.config.seeds)
    for seed in (0, 1):
        for k in (0, 1):
            _iteration(tmp_path, k, experiment=f"exp/seed_{seed}")
    rows = audit_rows(tmp_path)
    assert sorted(zip(rows.experiment, rows.iteration)) == [("exp/seed_0", 0), ("exp/seed_0", 1),
                                                            ("exp/seed_1", 0), ("exp/seed_1", 1)]
    text, status = audit(tmp_path)
    assert status == 0 and "4 iterations, 0 flagged" in text

"""Before a run (issue 23): the planned disk use against the free space is one warning line, never a
failure; the plan (torch) is computed once per job config and read back by Snakemake's onstart."""

import json

from emprior.config.loading import load_config
from emprior.core import artifacts
from emprior.core.job import Job
from emprior.pipeline.plan import disk_check
from emprior.report import disk_check as dc
from emprior.report.disk import plan


def test_a_shortfall_is_one_warning_line(tmp_path):
    results = tmp_path / "results"
    free = dc.free_bytes(results)  # a folder not made yet: its parent's filesystem
    assert dc.warning(results, 0) is None
    results.mkdir()
    (results / "done.h5").write_bytes(b"0" * 1000)
    assert dc.warning(results, free // 2) is None
    line = dc.warning(results, free + 10**15)
    assert line.startswith(f"warning: results folder {results}/ may run out of disk") and "\n" not in line
    assert "1.00 kB are there" in line


def test_disk_check_caches_the_plan_for_onstart(repo, tmp_path, capsys, monkeypatch):
    cfg = load_config(repo / "config" / "tiny.yaml")
    cfg["results"] = str(tmp_path / "results")
    monkeypatch.setattr(artifacts, "_JOB", {"config_file": str(tmp_path / "abc.json")})
    disk_check(Job(cfg))
    cached = dc.cache_path(cfg["results"], tmp_path / "abc.json")
    planned = sum(i.total_stored for i in plan(cfg))
    assert json.loads(cached.read_text()) == {"planned_bytes": planned} and planned > 0
    assert capsys.readouterr().err == ""  # it fits
    cached.write_text(json.dumps({"planned_bytes": 10**15}))  # a config that cannot fit
    dc.onstart_warning(cfg["results"], str(tmp_path / "abc.json"))
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("warning: results folder") and "1000.00 TB" in err

"""One results folder per config (issue 26): the presets write to different folders, and a run of other
config files into a folder another config made stops before any job, with one line."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emprior.config.owner import allowed, check_owner, claim, config_source, owner_of
from emprior.core.errors import ConfigError

REPO = Path(__file__).resolve().parents[3]


def test_each_preset_writes_to_its_own_folder():
    folders = {name: yaml.safe_load((REPO / "config" / name).read_text())["results"]
               for name in ("config.yaml", "paper.yaml", "tiny.yaml")}
    assert folders == {"config.yaml": "results", "paper.yaml": "results-paper", "tiny.yaml": "results-tiny"}


def test_config_source_is_relative_to_the_workflow(tmp_path):
    assert config_source([REPO / "config" / "paper.yaml"], REPO) == "config/paper.yaml"
    assert config_source([REPO / "config" / ".." / "config" / "tiny.yaml", tmp_path / "o.yaml"], REPO) == (
        "config/tiny.yaml")  # an overlay file (e.g. the SLURM test's mstep.gpus: 2) edits the preset
    assert config_source([tmp_path / "mine.yaml"], REPO) == str(tmp_path.resolve() / "mine.yaml")


def test_claim_then_a_foreign_config_stops(tmp_path, monkeypatch):
    results = tmp_path / "results"
    check_owner(results, "config/paper.yaml")  # a new folder: anybody's
    claim(results, "config/config.yaml")
    assert owner_of(results) == "config/config.yaml"
    check_owner(results, "config/config.yaml")  # the same config file again (edited or not): fine
    with pytest.raises(ConfigError) as info:
        check_owner(results, "config/paper.yaml")
    msg = str(info.value)
    assert "\n" not in msg and f"{results}/" in msg and "made by config/config.yaml" in msg
    assert "allow_foreign_results=true" in msg
    check_owner(results, "config/paper.yaml", allow=True)
    monkeypatch.delenv("EMPRIOR_ALLOW_FOREIGN_RESULTS", raising=False)
    cfg = {"allow_foreign_results": True, "seed": 0}
    assert allowed(cfg) and cfg == {"seed": 0}  # popped: the job configs never see it
    assert not allowed({})
    monkeypatch.setenv("EMPRIOR_ALLOW_FOREIGN_RESULTS", "1")
    assert allowed({})


def test_snakemake_stops_before_writing_anything(tmp_path):
    """The tiny config into a folder the CPU preset made: exit 1, the one line, nothing written."""
    claim(tmp_path / "results-tiny", "config/config.yaml")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    out = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(REPO / "Snakefile"), "--configfile",
                          str(REPO / "config" / "tiny.yaml"), "-d", str(tmp_path), "-n", "all"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 1
    lines = [line for line in out.stderr.splitlines() if line.startswith("error:")]
    assert lines == ["error: results folder results-tiny/ holds artifacts made by config/config.yaml; this run "
                     "(config/tiny.yaml) would replace them: set another `results:` (or --config results=DIR), "
                     "or allow it with --config allow_foreign_results=true"]
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".snakemake" not in p.parts)
    assert after == before and json.loads((tmp_path / "results-tiny/.config/owner.json").read_text()) == {
        "config": "config/config.yaml"}

"""Config validation: every preset is valid; typos, wrong types and ranges give one line naming the key."""

import subprocess
import sys

import pytest

from emprior.config.loading import load_config
from emprior.core.errors import ConfigError


@pytest.mark.parametrize("name", ["config.yaml", "paper.yaml", "tiny.yaml"])
def test_presets_are_valid(repo, name):
    cfg = load_config(repo / "config" / name)
    assert cfg["experiments"]


@pytest.mark.parametrize("override, pattern", [
    ({"lerning_rate": 1}, r"unknown key 'lerning_rate' at <top level>"),
    ({"experiments": {"digits": {"mstep": {"lerning_rate": 1}}}},
     r"unknown key 'lerning_rate' at experiments.digits.mstep"),
    ({"experiments": {"digits": {"mstep": {"lr": -1}}}}, r"experiments.digits.mstep.lr: -1 is less than or equal"),
    ({"experiments": {"digits": {"iterations": "three"}}}, r"experiments.digits.iterations: 'three' is not of type"),
    ({"experiments": {"digits": {"estep": {"sampler": "euler"}}}},
     r"experiments.digits.estep.sampler: 'euler' is not one of"),
    ({"experiments": {"digits": {"schedule": {"sigma_min": 10.0, "sigma_max": 1.0}}}},
     r"sigma_min \(10.0\) must be < sigma_max"),
    ({"seed": -1}, r"seed: -1 is less than the minimum"),
    ({"tables": {"table1": {"experiments": ["cifar"]}}}, r"tables.table1.experiments: 'cifar' is not one of"),
])
def test_bad_values_name_the_key(repo, override, pattern):
    with pytest.raises(ConfigError, match=pattern) as exc:
        load_config(repo / "config" / "config.yaml", overrides=override)
    assert "\n" not in str(exc.value)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(bad)


def test_snakemake_dry_run_rejects_typo(repo):
    """`snakemake -n --config lerning_rate=1` fails and names the key."""
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "-q", "--config", "lerning_rate=1"],
                         cwd=repo, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "lerning_rate" in out.stderr + out.stdout


def test_cli_validate_config(repo):
    out = subprocess.run([sys.executable, "-m", "emprior", "validate-config", str(repo / "config" / "tiny.yaml")],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ok" in out.stdout

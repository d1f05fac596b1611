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


def test_nested_config_strings_are_coerced_by_the_schema(repo):
    """Snakemake gives nested --config values as strings; the schema's types turn them back."""
    from emprior.config.loading import coerce_strings, load_schema, validate_config

    cfg = load_config(repo / "config" / "tiny.yaml")
    exp = cfg["experiments"]["digits"]
    exp["iterations"] = "2"
    exp["mstep"]["lr"] = "1e-3"
    exp["mstep"]["ema_decay"] = "null"
    exp["observation"]["noise_std"] = "0.5"
    exp["estep"]["sampler"] = "ddpm"  # a string the schema wants stays one
    done = coerce_strings(cfg, load_schema())
    assert sorted(".".join(map(str, p)) for p, _ in done) == [
        "experiments.digits.iterations", "experiments.digits.mstep.ema_decay", "experiments.digits.mstep.lr",
        "experiments.digits.observation.noise_std"]
    assert exp["iterations"] == 2 and exp["mstep"]["lr"] == 1e-3 and exp["mstep"]["ema_decay"] is None
    assert exp["estep"]["sampler"] == "ddpm"
    validate_config(cfg)
    exp["iterations"] = "two"  # cannot be coerced: the same one-line error as before
    with pytest.raises(ConfigError, match=r"experiments.digits.iterations: 'two' is not of type 'integer'"):
        validate_config(cfg)


def test_nested_config_override_plans_its_iterations(repo, tmp_path):
    """``--config 'experiments={digits: {iterations: 3}}'`` plans three digits M-steps per variant, also on
    the second parse (from the plan file)."""
    cmd = [sys.executable, "-m", "snakemake", "-s", str(repo / "Snakefile"), "--configfile",
           str(repo / "config" / "tiny.yaml"), "-d", str(tmp_path), "-n", "--quiet", "rules",
           "--config", "experiments={digits: {iterations: 3}}", "--", "all"]
    for _ in range(2):
        out = subprocess.run(cmd, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        counts = {ln.split()[0]: int(ln.split()[1]) for ln in out.stdout.splitlines()
                  if len(ln.split()) == 2 and ln.split()[1].isdigit()}
        # digits: 2 variants x 3 iterations, manifold: 1 variant x 2 iterations
        assert counts.get("mstep") == 2 * 3 + 2, out.stdout

"""The plan facts the Snakefile reads (emprior.config.planning): equal to what the plug-ins say, kept
per config and code version, read back without importing torch, never kept for an invalid config."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from emprior.config import planning
from emprior.config.loading import load_config
from emprior.core.errors import ConfigError
from emprior.evaluation.metrics.images import inception_weights_path
from emprior.methods import make_method

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture
def paper(tmp_path):
    cfg = load_config(REPO / "config" / "paper.yaml")
    cfg["results"] = str(tmp_path / "results")
    return cfg


def test_facts_are_the_methods_own_answers(paper):
    facts = planning.plan_facts(paper)
    n = 0
    for name, exp in paper["experiments"].items():
        for vname, var in exp["variants"].items():
            m, f = make_method(var, exp), facts.method(name, vname)
            assert f.name == var["method"] and f.stages == tuple(m.stages)
            assert (f.estep_check, f.init_needs_clean) == (m.estep_check, m.init_needs_clean)
            for k in range(1, exp["iterations"] + 2):
                assert f.uses_previous(k) == (m.uses_previous(k) and k <= exp["iterations"])
            n += 1
    # the paper config has every method: one without an E-step, one with a clean subset, DiEM's check
    kinds = {(f.stages, f.init_needs_clean, f.estep_check) for vs in facts.methods.values() for f in vs.values()}
    assert n >= 10 and len(kinds) >= 3
    assert facts.inception_weights == str(inception_weights_path(None))


def test_kept_facts_are_read_back_without_torch(paper, tmp_path):
    facts = planning.plan_facts(paper)
    kept = list((tmp_path / "results" / ".config").glob("plan-*.json"))
    assert [p.name for p in kept] == [f"plan-{facts.key[:16]}.json"]
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(paper))
    code = ("import json, sys; from emprior.config.planning import plan_facts\n"
            f"f = plan_facts(json.load(open({str(cfg_file)!r})))\n"
            "print(json.dumps({'torch': 'torch' in sys.modules, 'jsonschema': 'jsonschema' in sys.modules, "
            "'facts': f.to_json()}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    got = json.loads(out.stdout)
    assert got["torch"] is False and got["jsonschema"] is False
    assert got["facts"] == json.loads(json.dumps(facts.to_json()))


def test_the_key_follows_config_plugins_and_hub_env(paper, tmp_path, monkeypatch):
    key = planning.plan_key(paper)
    assert planning.plan_key(copy.deepcopy(paper)) == key
    edited = copy.deepcopy(paper)
    edited["experiments"]["cifar10"]["iterations"] += 1
    assert planning.plan_key(edited) != key
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    assert planning.plan_key(paper) != key
    monkeypatch.delenv("TORCH_HOME")
    plugin = tmp_path / "my_plugin.py"
    plugin.write_text("X = 1\n")
    with_plugin = {**paper, "plugins": [str(plugin)]}
    k1 = planning.plan_key(with_plugin)
    plugin.write_text("X = 2\n")
    assert k1 not in (key, planning.plan_key(with_plugin))
    # a plug-in that is not there: no key, so validation runs and names it
    assert planning.plan_key({**paper, "plugins": [str(tmp_path / "absent.py")]}) is None
    with pytest.raises(ConfigError, match=r"plugins\[0\]: plug-in file .*absent.py not found"):
        planning.plan_facts({**paper, "plugins": [str(tmp_path / "absent.py")]})


def test_a_new_config_gets_its_own_facts(paper, tmp_path):
    first = planning.plan_facts(paper)
    edited = copy.deepcopy(paper)
    exp = edited["experiments"]["cifar10"]
    exp["iterations"] = 3
    second = planning.plan_facts(edited)
    assert second.key != first.key
    assert second.method("cifar10", "diem_tweedie").previous_at == (2, 3)
    assert len(list((tmp_path / "results" / ".config").glob("plan-*.json"))) == 2


def test_an_invalid_config_is_never_kept(paper, tmp_path):
    bad = copy.deepcopy(paper)
    bad["experiments"]["cifar10"]["variants"]["diem_tweedie"]["method"] = "diemm"
    for _ in range(2):
        with pytest.raises(ConfigError, match=r"unknown EM method 'diemm'|'diemm' is not one of"):
            planning.plan_facts(bad)
    assert not list((tmp_path / "results" / ".config").glob("plan-*"))


def test_a_damaged_plan_file_is_computed_again(paper, tmp_path):
    facts = planning.plan_facts(paper)
    path = planning.cache_path(paper, facts.key)
    path.write_text("{not json")
    assert planning.plan_facts(paper) == facts
    assert json.loads(path.read_text())["key"] == facts.key


def test_the_file_can_be_turned_off(paper, tmp_path, monkeypatch):
    monkeypatch.setenv("EMPRIOR_PLAN_CACHE", "0")
    facts = planning.plan_facts(paper)
    assert facts.methods and not (tmp_path / "results" / ".config").exists()


def test_the_shipped_configs_plan(tmp_path):
    for name in ("config.yaml", "tiny.yaml"):
        cfg = yaml.safe_load((REPO / "config" / name).read_text())
        cfg["results"] = str(tmp_path / name)
        facts = planning.plan_facts(cfg)
        assert set(facts.methods) == set(cfg["experiments"])
        assert all(f.stages == ("init", "estep", "mstep") for f in facts.methods["digits"].values()
                   if f.name == "diem")

"""evaluate.iterations: which EM iterations get prior samples and metrics.json, and its validation."""

import copy
from pathlib import Path

import pytest
import yaml

from emprior.config.loading import validate_config
from emprior.core.errors import ConfigError
from emprior.evaluation.selection import evaluated_iterations

REPO = Path(__file__).resolve().parents[3]


def _exp(iterations, sel=None):
    ev = {} if sel is None else {"iterations": sel}
    return {"iterations": iterations, "evaluate": ev}


def test_selection():
    assert evaluated_iterations(_exp(3)) == [0, 1, 2, 3] and evaluated_iterations(_exp(3, "all"), first=1) == [1, 2, 3]
    assert evaluated_iterations(_exp(32, "final")) == [32] and evaluated_iterations(_exp(32, "final"), 1) == [32]
    # a list: those k plus the final one (Table 1); a variant without iter_000 skips 0
    assert evaluated_iterations(_exp(5, [3, 0, 1])) == [0, 1, 3, 5]
    assert evaluated_iterations(_exp(5, [0, 5]), first=1) == [5]


@pytest.fixture
def tiny():
    return yaml.safe_load((REPO / "config" / "tiny.yaml").read_text())


def _check(cfg, **evaluate):
    cfg = copy.deepcopy(cfg)
    cfg["experiments"]["digits"]["evaluate"].update(evaluate)
    return validate_config(cfg, source="tiny.yaml")


def test_validation(tiny):
    _check(tiny, iterations=[0, 1], shards=64)  # digits: 1 EM iteration, 64 prior samples
    _check(tiny, iterations="final", shards=1)
    for bad, msg in [
        ({"iterations": [0, 2]}, r"^tiny.yaml: experiments.digits.evaluate.iterations: 2 is out of range 0..1 "),
        ({"shards": 65}, r"^tiny.yaml: experiments.digits.evaluate.shards \(65\) must be <= n_samples \(64\)"),
        ({"shards": 0}, r"^tiny.yaml: experiments.digits.evaluate.shards: 0 is less than the minimum of 1"),
        ({"iterations": "some"}, r"^tiny.yaml: experiments.digits.evaluate.iterations: must be all or final or "
                                  r"a list of iterations, got 'some'$"),
        ({"iterations": [1, 1]}, r"^tiny.yaml: experiments.digits.evaluate.iterations: \[1, 1\] has non-unique"),
        ({"iterations": [-1]}, r"^tiny.yaml: experiments.digits.evaluate.iterations.0: -1 is less than the minimum"),
        ({"iterations": 3}, r"^tiny.yaml: experiments.digits.evaluate.iterations: 3 is not of type 'string', 'array'"),
    ]:
        with pytest.raises(ConfigError, match=msg) as e:
            _check(tiny, **bad)
        assert "\n" not in str(e.value)

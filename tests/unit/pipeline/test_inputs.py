"""Jobs refuse inputs made for another experiment, variant or iteration, or by another rule, and
out-of-range arguments, each with one line (emprior.pipeline.inputs)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from emprior.core.artifacts import sidecar
from emprior.core.errors import ArtifactError
from emprior.core.job import Job
from emprior.pipeline import em

VARIANT = {"method": "diem", "posterior": {"method": "mmps", "covariance": "tweedie", "solver": "cg", "maxiter": 1}}


@pytest.fixture
def q0(tmp_path, tiny_digits):
    cfg = tiny_digits(tmp_path, {"v": VARIANT})
    em.init_prior(Job(cfg, "digits", "v"), str(tmp_path / "observations.h5"), str(tmp_path / "m0.pt"))
    (tmp_path / "job.json").write_text(json.dumps(cfg))
    return cfg, tmp_path


def _edit_provenance(path, **fields):
    side = sidecar(path)
    rec = json.loads(side.read_text())
    rec["provenance"].update(fields)
    side.write_text(json.dumps(rec))


def test_a_model_of_another_experiment_is_refused(q0):
    cfg, d = q0
    _edit_provenance(d / "m0.pt", experiment="manifold")
    with pytest.raises(ArtifactError, match=r"m0.pt: --model was made for experiment 'manifold', this job "
                                            r"\(digits/v iteration 1\) needs experiment 'digits'"):
        em.estep(Job(cfg, "digits", "v", 1), 0, str(d / "m0.pt"), str(d / "observations.h5"), str(d / "s.h5"))
    assert not (d / "s.h5").exists()


def test_a_model_of_another_iteration_variant_or_rule_is_refused(q0):
    cfg, d = q0
    args = [sys.executable, "-m", "emprior", "prior-samples", "--config", str(d / "job.json"), "--experiment",
            "digits", "--variant", "v", "--model", str(d / "m0.pt"), "--out", str(d / "p.h5"), "--iteration", "1"]
    out = subprocess.run(args, capture_output=True, text=True)
    assert out.returncode == 2
    err = [ln for ln in out.stderr.strip().splitlines() if " INFO " not in ln]
    assert len(err) == 1 and "was made for iteration 0, this job (digits/v iteration 1) needs iteration 1" in err[0]
    _edit_provenance(d / "m0.pt", variant="w")
    with pytest.raises(ArtifactError, match=r"made for variant 'w'"):
        em.estep(Job(cfg, "digits", "v", 1), 0, str(d / "m0.pt"), str(d / "observations.h5"), str(d / "s.h5"))
    _edit_provenance(d / "m0.pt", variant="v", rule="prior_samples")
    with pytest.raises(ArtifactError, match=r"made by rule 'prior_samples', this job reads one made by 'init_prior' "
                                            r"or 'mstep'"):
        em.estep(Job(cfg, "digits", "v", 1), 0, str(d / "m0.pt"), str(d / "observations.h5"), str(d / "s.h5"))
    assert not (d / "p.h5").exists() and not (d / "s.h5").exists()


def test_out_of_range_arguments_are_one_line(q0):
    cfg, d = q0
    args = (str(d / "m0.pt"), str(d / "observations.h5"), str(d / "s.h5"))
    with pytest.raises(ArtifactError, match=r"^--shard 5: out of range for experiments.digits with 2 shards \(0 to 1\)$"):
        em.estep(Job(cfg, "digits", "v", 1), 5, *args)
    with pytest.raises(ArtifactError, match=r"^--iteration 7: out of range for experiments.digits \(1 to 2\)$"):
        em.estep(Job(cfg, "digits", "v", 7), 0, *args)

"""Posterior and diffusion samplers on emprior.core.registry: every plug-in declares its options as a
dataclass whose JSON schema is valid and admits its defaults, and make_posterior names a bad key."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from jsonschema import Draft202012Validator

from emprior.core.registry import options_schema
from emprior.diffusion import DIFFUSION_SAMPLERS
from emprior.posterior import POSTERIOR_SAMPLERS, make_posterior

ENTRIES = [pytest.param(e, id=f"posterior-{e.name}") for e in POSTERIOR_SAMPLERS] + [
    pytest.param(e, id=f"diffusion-{e.name}") for e in DIFFUSION_SAMPLERS
]


def test_the_plugins_are_registered():
    # (other test files may register their own, e.g. tests/workflow/test_extending.py)
    assert {"diffpir", "dps", "mmps", "pigdm", "tmpd"} <= set(POSTERIOR_SAMPLERS.names())
    assert DIFFUSION_SAMPLERS.names() == ["ddpm", "ddim", "pc", "heun"]


@pytest.mark.parametrize("entry", ENTRIES)
def test_options_schema_is_valid_json_schema(entry):
    assert dataclasses.is_dataclass(entry.options) and entry.summary
    schema = options_schema(entry.options)
    assert list(schema) == [f.name for f in dataclasses.fields(entry.options)]
    for key, fragment in schema.items():
        Draft202012Validator.check_schema(fragment)
        assert fragment.get("description"), key
    # the defaults are valid config values (a config that omits a key means its default)
    Draft202012Validator.check_schema({"type": "object", "properties": schema})
    Draft202012Validator({"type": "object", "properties": schema}).validate(dataclasses.asdict(entry.options()))


class _Op:
    noise_std = 0.1

    def A(self, x):
        return x.reshape(x.shape[0], -1)[:, :2]

    def At(self, y):
        return torch.cat([y, torch.zeros(y.shape[0], 2)], dim=1).reshape(y.shape[0], 1, 4)


def test_unknown_option_is_a_one_line_error_naming_the_key_and_the_allowed_ones():
    y = torch.zeros(2, 2)
    with pytest.raises(ValueError) as exc:
        make_posterior("mmps", lambda x, s: x, _Op(), y, zeta=1.0)
    msg = str(exc.value)
    assert "\n" not in msg and "'zeta'" in msg and "mmps" in msg
    assert all(k in msg for k in ("covariance", "solver", "maxiter", "tol", "rtol", "prior"))
    with pytest.raises(ValueError) as exc:
        make_posterior("tmpd", lambda x, s: x, _Op(), y, maxiter=3)
    assert "\n" not in str(exc.value) and "'maxiter'" in str(exc.value)
    with pytest.raises(ValueError) as exc:
        make_posterior("nope", lambda x, s: x, _Op(), y)
    msg = str(exc.value)
    assert "\n" not in msg and "'nope'" in msg and all(n in msg for n in POSTERIOR_SAMPLERS.names())


def test_make_posterior_passes_the_options_through():
    post = make_posterior("pigdm", lambda x, s: x, _Op(), torch.zeros(2, 2), maxiter=7)
    assert post.options.maxiter == 7 and post.maxiter == 7 and post.covariance == "inv"
    assert make_posterior("dps", lambda x, s: x, _Op(), torch.zeros(2, 2)).zeta == 1.0

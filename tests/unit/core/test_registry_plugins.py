"""The dataset, operator and network registries: every plug-in declares its options in a dataclass
with a valid JSON schema, and a misspelled option is a one-line ConfigError naming it and the
allowed ones (and, through the public entry points, the error those always raised)."""

from __future__ import annotations

import dataclasses

import jsonschema
import numpy as np
import pytest

from emprior.core.errors import ConfigError
from emprior.core.registry import options_schema
from emprior.data import DATASETS, load_dataset
from emprior.nets import NETS, NetConfigError, build_denoiser
from emprior.operators import OPERATORS, OperatorError, make_operator

REGISTRIES = {"dataset": DATASETS, "operator": OPERATORS, "network": NETS}
ENTRIES = [(family, e.name) for family, reg in REGISTRIES.items() for e in reg]


def _typo(options: type) -> str:
    """A misspelling of the plug-in's first option (doubled last letter), or any key if it has none."""
    fields = dataclasses.fields(options)
    return fields[0].name + fields[0].name[-1] if fields else "typo"


def test_the_paper_plugins_are_registered():
    assert set(DATASETS.names()) == {"manifold", "digits", "cifar10", "ffhq", "fastmri", "phantom"}
    assert set(OPERATORS.names()) == {"pixel_mask", "box_mask", "projection", "fourier_lines", "blur",
                                      "downsample", "crop", "identity"}
    assert set(NETS.names()) == {"mlp", "unet", "adm"}


@pytest.mark.parametrize("family, name", ENTRIES)
def test_options_dataclass_has_a_valid_schema(family, name):
    entry = REGISTRIES[family].entry(name)
    assert dataclasses.is_dataclass(entry.options)
    schema = options_schema(entry.options)
    assert list(schema) == [f.name for f in dataclasses.fields(entry.options)]
    jsonschema.Draft202012Validator.check_schema({"type": "object", "properties": schema})
    # every default satisfies its own field's schema
    for f in dataclasses.fields(entry.options):
        default = f.default if f.default_factory is dataclasses.MISSING else f.default_factory()
        if default is not dataclasses.MISSING:
            jsonschema.validate(default, schema[f.name])


@pytest.mark.parametrize("family, name", ENTRIES)
def test_misspelled_option_is_a_one_line_config_error(family, name):
    reg = REGISTRIES[family]
    options = reg.entry(name).options
    typo = _typo(options)
    with pytest.raises(ConfigError) as info:
        reg.options(name, {reg.key: name, typo: 1}, where=family)
    msg = str(info.value)
    assert "\n" not in msg and f"{family}.{typo}:" in msg
    allowed = [f.name for f in dataclasses.fields(options)] or ["none"]
    assert f"(allowed: {', '.join(allowed)})" in msg


@pytest.mark.parametrize("name", DATASETS.names())
def test_load_dataset_names_a_misspelled_key(name):
    typo = _typo(DATASETS.entry(name).options)
    with pytest.raises(ConfigError, match=rf"^dataset\.{typo}: not an option of dataset '{name}'"):
        load_dataset({"name": name, typo: 1}, seed=0)


@pytest.mark.parametrize("kind", OPERATORS.names())
def test_make_operator_names_a_misspelled_option(kind):
    typo = _typo(OPERATORS.entry(kind).options)
    with pytest.raises(OperatorError, match=rf"^{typo}: not an option of operator '{kind}'") as info:
        make_operator(kind, 1, (1, 8, 8), 0.1, np.random.default_rng(0), **{typo: 1})
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kind", OPERATORS.names())
def test_operator_class_attributes_come_from_its_dataclass(kind):
    cls = OPERATORS.get(kind)
    fields = dataclasses.fields(OPERATORS.entry(kind).options)
    assert cls.kind == kind
    assert list(cls.option_defaults) + list(cls.draw_options) == [f.name for f in fields]
    assert cls.option_defaults == {f.name: f.default for f in fields if f.name in cls.option_defaults}


@pytest.mark.parametrize("net", NETS.names())
def test_build_denoiser_names_a_misspelled_key(net):
    typo = _typo(NETS.entry(net).options)
    with pytest.raises(NetConfigError, match=rf"^denoiser\.{typo}: not an option of network '{net}'") as info:
        build_denoiser({"net": net, typo: [8]}, (1, 8, 8))
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)

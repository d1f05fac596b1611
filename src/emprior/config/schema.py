"""The config schema: ``schema.yaml`` (JSON Schema Draft 2020-12, no unknown keys) for the fixed
sections, with the plug-in sections generated from the registries, so that every name and option
is declared once, by its plug-in. In ``schema.yaml`` a generated slot is written
``{$generated: NAME}`` (see :data:`SLOTS`); ``{$generated_options: NAME}`` in a section's
``properties`` adds the options of every plug-in of that family."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import yaml

SCHEMA_PATH = Path(__file__).resolve().parent / "schema.yaml"


def registries() -> dict[str, Any]:
    """Every plug-in family's registry (importing a family's package registers its built-ins)."""
    from emprior.data import DATASETS
    from emprior.diffusion import DIFFUSION_SAMPLERS
    from emprior.methods import EM_METHODS
    from emprior.nets import NETS
    from emprior.operators import OPERATORS
    from emprior.posterior import POSTERIOR_SAMPLERS

    return {"dataset": DATASETS, "operator": OPERATORS, "network": NETS, "posterior_sampler": POSTERIOR_SAMPLERS,
            "diffusion_sampler": DIFFUSION_SAMPLERS, "em_method": EM_METHODS}


def _union(registry) -> dict[str, Any]:
    """The options of every plug-in of a family as one properties mapping (each plug-in checks its own
    keys in :func:`emprior.config.loading.validate_config`)."""
    props: dict[str, Any] = {}
    for opts in registry.option_schemas().values():
        for k, v in opts.items():
            props[k] = v if props.get(k, v) == v else {}
    return props


def _slots(reg: dict[str, Any]) -> dict[str, Callable[[], Any]]:
    return {
        "dataset": lambda: reg["dataset"].schema(),
        "network": lambda: reg["network"].schema(),
        "em_method": lambda: reg["em_method"].schema(),
        "posterior_sampler": lambda: reg["posterior_sampler"].schema(),
        "operator_names": lambda: {"enum": reg["operator"].names()},
        "operator_options": lambda: {"type": "object", "additionalProperties": False,
                                     "properties": _union(reg["operator"])},
        "diffusion_sampler_names": lambda: {"enum": reg["diffusion_sampler"].names()},
    }


SLOTS = ("dataset", "network", "em_method", "posterior_sampler", "operator_names", "operator_options",
         "diffusion_sampler_names")


def _fill(node: Any, slots: dict[str, Callable[[], Any]], reg: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        if set(node) == {"$generated"}:
            return slots[node["$generated"]]()
        out = {k: _fill(v, slots, reg) for k, v in node.items() if k != "$generated_options"}
        if "$generated_options" in node.get("properties", {}):
            family = node["properties"]["$generated_options"]
            out["properties"] = {**_union(reg[family]), **{k: v for k, v in out["properties"].items()
                                                         if k != "$generated_options"}}
        return out
    if isinstance(node, list):
        return [_fill(v, slots, reg) for v in node]
    return node


def build_schema() -> dict[str, Any]:
    """The full schema with every ``$generated`` slot filled from the registries as they are now
    (after the config's plug-ins were imported)."""
    reg = registries()
    return _fill(yaml.safe_load(SCHEMA_PATH.read_text()), _slots(reg), reg)

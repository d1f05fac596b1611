"""Configuration: YAML files merged in order, validated against the schema generated from
``schema.yaml`` and the plug-in registries (:mod:`emprior.config.schema`; JSON Schema Draft 2020-12,
no unknown keys), then each plug-in's own options. Errors are one line naming the key path and the
bad value."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import yaml

from emprior.core.errors import ConfigError
from emprior.core.sections import experiment, variant  # noqa: F401  (re-exported)

def load_schema() -> dict[str, Any]:
    from emprior.config.schema import build_schema

    return build_schema()


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


_INT = re.compile(r"^[+-]?\d+$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|^[+-]?(inf|Infinity|nan)$")


def _types(node: dict[str, Any], root: dict[str, Any]) -> tuple[set[str], list[dict[str, Any]]]:
    """The JSON types a schema node allows and the sub-schemas to descend into ($ref and the branches
    of oneOf/anyOf/allOf resolved)."""
    if "$ref" in node:
        target: Any = root
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part]
        return _types(target, root)
    types: set[str] = set()
    t = node.get("type")
    if isinstance(t, str):
        types.add(t)
    elif isinstance(t, list):
        types.update(t)
    if "enum" in node:
        types.update(type(v).__name__ for v in node["enum"])  # str, int, float, bool, NoneType
    nodes = [node]
    for key in ("oneOf", "anyOf", "allOf"):
        for sub in node.get(key, []):
            st, sn = _types(sub, root)
            types |= st
            nodes += sn
    return types, nodes


def _scalar(text: str, types: set[str]) -> Any:
    """``text`` as the first type of ``types`` it spells, else itself (a string the schema allows, or
    one the validator then reports)."""
    if "string" in types or "str" in types:
        return text
    if types & {"integer", "int"} and _INT.match(text):
        return int(text)
    if types & {"number", "float"} and (_INT.match(text) or _FLOAT.match(text)):
        return int(text) if _INT.match(text) and "integer" in types else float(text)
    if types & {"boolean", "bool"} and text in ("true", "True", "false", "False"):
        return text in ("true", "True")
    if types & {"null", "NoneType"} and text in ("null", "None", "~", ""):
        return None
    return text


def coerce_strings(config: Any, schema: dict[str, Any]) -> list[tuple[list[Any], Any]]:
    """Snakemake passes the values of a nested ``--config`` override as strings (``experiments={digits:
    {iterations: 2}}`` gives ``'2'``): replace, in place, each string whose schema type is a number,
    integer, boolean or null and which spells one. Returns (key path, new value) of each replacement.
    The options inside a free-form plug-in object (a variant's ``posterior: {method: mmps, ...}``) have no
    type in the schema: override those with --configfile (a YAML file), not nested --config."""
    done: list[tuple[list[Any], Any]] = []

    def walk(value: Any, node: dict[str, Any], path: list[Any], parent: Any, key: Any) -> None:
        types, nodes = _types(node, schema)
        if isinstance(value, str):
            new = _scalar(value, types)
            if new is not value and parent is not None:
                parent[key] = new
                done.append((path, new))
            return
        for n in nodes:
            if isinstance(value, dict):
                props = n.get("properties", {})
                extra = n.get("additionalProperties")
                for k, v in list(value.items()):
                    sub = props.get(k, extra if isinstance(extra, dict) else None)
                    if sub is not None:
                        walk(v, sub, path + [k], value, k)
            elif isinstance(value, list) and isinstance(n.get("items"), dict):
                for i, v in enumerate(value):
                    walk(v, n["items"], path + [i], value, i)

    walk(config, schema, [], None, None)
    return done


def apply_coercions(config: dict[str, Any], coercions: list[tuple[list[Any], Any]]) -> None:
    """Replay :func:`coerce_strings`' replacements (kept with the plan) on the same raw config."""
    for path, value in coercions:
        node: Any = config
        for part in path[:-1]:
            node = node[part]
        node[path[-1]] = value


def _key_path(error: Any) -> str:
    parts = [str(p) for p in error.absolute_path]
    return ".".join(parts) if parts else "<top level>"


def validate_config(config: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """Raise :class:`ConfigError` (one line) unless ``config`` satisfies the schema, every plug-in's
    own options and the cross-field rules the schema cannot express. The config's ``plugins`` are
    imported first, so that what they register can be named."""
    from jsonschema import Draft202012Validator  # here: planning from a kept plan file never needs it
    from jsonschema.exceptions import best_match

    from emprior.config.plugins import load_plugins
    from emprior.config.seeds import check_seeds
    from emprior.evaluation.selection import check_iterations

    if isinstance(config, dict) and isinstance(config.get("plugins"), list):
        load_plugins(config["plugins"], source=source)
    schema = load_schema()
    coerce_strings(config, schema)
    validator = Draft202012Validator(schema)
    error = best_match(validator.iter_errors(config))
    if error is not None:
        where = _key_path(error)
        if error.validator == "additionalProperties":
            allowed = sorted(error.schema.get("properties", {}))
            extra = sorted(set(error.instance) - set(allowed)) if isinstance(error.instance, dict) else []
            names = ", ".join(repr(e) for e in extra)
            hint = f" (allowed: {', '.join(allowed)})" if allowed else ""
            raise ConfigError(f"{source}: unknown key {names} at {where}{hint}")
        raise ConfigError(f"{source}: {where}: {error.message}")
    for name, exp in config.get("experiments", {}).items():
        where = f"experiments.{name}"
        sch = exp["schedule"]
        if sch["sigma_min"] >= sch["sigma_max"]:
            raise ConfigError(f"{source}: {where}.schedule: sigma_min ({sch['sigma_min']}) must be < sigma_max "
                              f"({sch['sigma_max']})")
        mstep = exp["mstep"]
        if ("steps" in mstep) == ("epochs" in mstep):
            raise ConfigError(f"{source}: {where}.mstep: set exactly one of 'steps' or 'epochs'")
        if mstep["batch_size"] % mstep.get("gpus", 1):
            raise ConfigError(f"{source}: {where}.mstep: batch_size ({mstep['batch_size']}) must be divisible "
                              f"by gpus ({mstep['gpus']}): every GPU takes an equal share of each batch")
        if exp["estep"]["shards"] > 1 and exp["estep"]["block_size"] < 1:
            raise ConfigError(f"{source}: {where}.estep.block_size must be >= 1")
        ev = exp["evaluate"]
        if ev.get("shards", 1) > ev["n_samples"]:
            raise ConfigError(f"{source}: {where}.evaluate.shards ({ev['shards']}) must be <= n_samples "
                              f"({ev['n_samples']}): every shard draws at least one sample")
        check_iterations(exp, f"{source}: {where}")
        _check_plugins(exp, f"{source}: {where}")
    for section in ("sampler_benchmark", "cost_benchmark", "ffhq_benchmark"):
        _check_posterior_specs(config.get(section, {}).get("methods", {}), f"{source}: {section}.methods")
    table1 = config.get("tables", {}).get("table1")
    for name in (table1 or {}).get("experiments", []):
        if name not in config.get("experiments", {}):
            raise ConfigError(f"{source}: tables.table1.experiments: {name!r} is not one of the "
                              f"experiments ({', '.join(config['experiments'])})")
    check_seeds(config, source)
    return config


def _check_plugins(exp: dict[str, Any], where: str) -> None:
    """Each plug-in checks its own keys: the schema only knows the union of a family's options."""
    from emprior.config.schema import registries
    from emprior.methods import make_method

    reg = registries()
    reg["dataset"].options(exp["dataset"]["name"], exp["dataset"], where=f"{where}.dataset")
    obs = exp["observation"]
    reg["operator"].options(obs["operator"], obs.get("options", {}), where=f"{where}.observation.options")
    reg["network"].options(exp["denoiser"]["net"], exp["denoiser"], where=f"{where}.denoiser")
    for name, var in exp["variants"].items():
        make_method(var, exp, where=f"{where}.variants.{name}")


def _check_posterior_specs(methods: dict[str, Any], where: str) -> None:
    from emprior.config.schema import registries

    samplers = registries()["posterior_sampler"]
    for label, spec in methods.items():
        samplers.options(spec["method"], spec, where=f"{where}.{label}")


def load_config(*paths: str | Path, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Merge YAML/JSON config files left to right, then ``overrides``; validate; return the dict."""
    config: dict[str, Any] = {}
    for path in paths:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_text()
            data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
        except (yaml.YAMLError, json.JSONDecodeError) as exc:
            first = str(exc).splitlines()[0]
            raise ConfigError(f"{path}: not valid YAML/JSON ({first})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
        config = deep_merge(config, data)
    if overrides:
        config = deep_merge(config, overrides)
    return validate_config(config, source=", ".join(str(p) for p in paths) or "config")


def job_config(config: dict[str, Any], experiment_name: str | None = None, variant_name: str | None = None,
               drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of ``config`` one job depends on: global keys plus one experiment (and one of its
    variants), minus the sections in ``drop`` (experiment sections, or the global ``metrics``).
    Snakemake passes it to the job as a file named by its digest, so editing one variant or the
    evaluation settings does not rerun unrelated jobs."""
    out: dict[str, Any] = {k: copy.deepcopy(config[k])
                           for k in ("seed", "results", "torch_threads", "device", "precision", "storage", "reproducibility",
                                     "plugins", "metrics")
                           if k in config and k not in drop}
    if experiment_name is None:
        for key in ("fig2", "tables", "sampler_benchmark", "cost_benchmark", "ffhq_benchmark"):
            if key in config and key not in drop:
                out[key] = copy.deepcopy(config[key])
        out["experiments"] = copy.deepcopy(config["experiments"])
        return out
    exp = copy.deepcopy(experiment(config, experiment_name))
    if variant_name is not None:
        exp["variants"] = {variant_name: copy.deepcopy(variant(config, experiment_name, variant_name))}
    for key in drop:
        exp.pop(key, None)
    out["experiments"] = {experiment_name: exp}
    return out

"""Configuration: YAML files merged in order, validated against the schema generated from
``schema.yaml`` and the plug-in registries (:mod:`emprior.config.schema`; JSON Schema Draft 2020-12,
no unknown keys), then each plug-in's own options. Errors are one line naming the key path and the
bad value."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import yaml

from emprior.core.errors import ConfigError

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
    from emprior.evaluation.selection import check_iterations

    if isinstance(config, dict) and isinstance(config.get("plugins"), list):
        load_plugins(config["plugins"], source=source)
    validator = Draft202012Validator(load_schema())
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


def experiment(config: dict[str, Any], name: str) -> dict[str, Any]:
    try:
        return config["experiments"][name]
    except KeyError:
        raise ConfigError(f"config: experiments.{name}: no such experiment "
                          f"(have: {', '.join(config.get('experiments', {}))})") from None


def variant(config: dict[str, Any], exp_name: str, name: str) -> dict[str, Any]:
    exp = experiment(config, exp_name)
    try:
        return exp["variants"][name]
    except KeyError:
        raise ConfigError(f"config: experiments.{exp_name}.variants.{name}: no such variant "
                          f"(have: {', '.join(exp['variants'])})") from None


def job_config(config: dict[str, Any], experiment_name: str | None = None, variant_name: str | None = None,
               drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """The part of ``config`` one job depends on: global keys plus one experiment (and one of its
    variants), minus the sections in ``drop`` (experiment sections, or the global ``metrics``).
    Snakemake passes it to the job as a file named by its digest, so editing one variant or the
    evaluation settings does not rerun unrelated jobs."""
    out: dict[str, Any] = {k: copy.deepcopy(config[k])
                           for k in ("seed", "results", "torch_threads", "device", "precision", "storage", "plugins",
                                     "metrics")
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

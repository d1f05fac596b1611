"""What the Snakefile needs from the plug-ins to plan the DAG, without importing them.

Planning needs three things that live in plug-in code: that the config is valid
(:func:`~emprior.config.loading.validate_config`, whose schema is generated from every registry),
each variant's EM-method facts (its stages, whether iteration k's M-step starts from iteration
k-1's model, whether it reads the clean subset, whether iteration 1 has an E-step check), and
torch.hub's cache folder (the default Inception weights). Importing the registries imports torch,
which is most of the time Snakemake needs to read the Snakefile: every dry run, and every SLURM
job's own snakemake on its compute node, pays it.

The answers depend only on the config, on the source of emprior and of the config's ``plugins``,
and on the environment variables torch.hub reads. :func:`plan_facts` computes them once for each
such combination (its sha256 is the key) and keeps them as ``<results>/.config/plan-<key>.json``;
a later parse with the same key reads that file and imports no plug-in. A config that fails
validation is never kept, so its error is raised on every parse. ``EMPRIOR_PLAN_CACHE=0`` turns
the file off (computed every time), e.g. while editing a helper module that a plug-in imports:
the key covers the files listed in ``plugins``, not what they import.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import emprior

FORMAT = 2  # bump when the facts or their meaning change
# torch.hub.get_dir() reads these; the default Inception weights path follows them
HUB_ENV = ("TORCH_HOME", "XDG_CACHE_HOME")


@dataclass(frozen=True)
class MethodFacts:
    """One variant's EM method as the rules see it (:class:`emprior.methods.base.EMMethod`)."""

    name: str
    stages: tuple[str, ...]
    estep_check: bool
    init_needs_clean: bool
    previous_at: tuple[int, ...]  # iterations k whose M-step starts from iter_{k-1}/model.pt
    final_stage: bool = False  # <variant>/final/ jobs after the last iteration (EMMethod.final_stage)

    def uses_previous(self, iteration: int) -> bool:
        return iteration in self.previous_at


@dataclass(frozen=True)
class PlanFacts:
    methods: dict[str, dict[str, MethodFacts]]  # experiment -> variant -> facts
    inception_weights: str  # metrics.inception_weights, or torch.hub's cache when unset
    key: str
    # (key path, value) of each string of a nested --config override that the schema's types turned into a
    # number / boolean / null (emprior.config.loading.coerce_strings); replayed on the raw config
    coercions: tuple = ()

    def method(self, experiment: str, variant: str) -> MethodFacts:
        return self.methods[experiment][variant]

    def to_json(self) -> dict[str, Any]:
        return {"format": FORMAT, "key": self.key, "inception_weights": self.inception_weights,
                "coercions": [[list(p), v] for p, v in self.coercions],
                "methods": {e: {v: asdict(m) for v, m in vs.items()} for e, vs in self.methods.items()}}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanFacts:
        methods = {e: {v: MethodFacts(m["name"], tuple(m["stages"]), bool(m["estep_check"]),
                                      bool(m["init_needs_clean"]), tuple(m["previous_at"]),
                                      bool(m.get("final_stage", False)))
                       for v, m in vs.items()} for e, vs in data["methods"].items()}
        return cls(methods, str(data["inception_weights"]), str(data["key"]),
                   tuple((list(p), v) for p, v in data.get("coercions", [])))


def _package_files() -> list[Path]:
    root = Path(emprior.__file__).resolve().parent
    return sorted(p for p in root.rglob("*") if p.suffix in (".py", ".yaml") and "__pycache__" not in p.parts)


def _plugin_file(spec: str) -> Path | None:
    """The source file of one ``plugins`` entry (a .py path or a module name), None if not found."""
    if spec.endswith(".py"):
        return Path(spec).resolve()
    try:
        found = importlib.util.find_spec(spec)
    except (ImportError, ValueError):
        return None
    return Path(found.origin) if found is not None and found.origin else None


def plan_key(config: dict[str, Any]) -> str | None:
    """sha256 of everything the facts depend on; None when it cannot be formed (a plug-in file that
    does not exist, a config that is not JSON-like), so the facts are computed and any error raised."""
    h = hashlib.sha256(f"emprior plan {FORMAT}\n".encode())
    try:
        h.update(json.dumps(config, sort_keys=True, allow_nan=True).encode())
    except (TypeError, ValueError):
        return None
    root = Path(emprior.__file__).resolve().parent
    for path in _package_files():
        h.update(f"\n{path.relative_to(root)}\n".encode())
        h.update(path.read_bytes())
    plugins = config.get("plugins") or []
    if not isinstance(plugins, list):
        return None
    for spec in plugins:
        path = _plugin_file(spec) if isinstance(spec, str) and spec else None
        if path is None or not path.is_file():
            return None
        h.update(f"\nplugin {spec}\n".encode())
        h.update(path.read_bytes())
    for name in HUB_ENV:
        h.update(f"\n{name}={os.environ.get(name, '')}".encode())
    return h.hexdigest()


def compute_facts(config: dict[str, Any], source: str = "config", key: str = "") -> PlanFacts:
    """Validate ``config`` (one-line ConfigError; nested --config strings coerced in place by the schema's
    types first) and ask the plug-ins; imports every registry."""
    from emprior.config.loading import coerce_strings, load_schema, validate_config
    from emprior.evaluation.metrics.images import inception_weights_path
    from emprior.methods import make_method

    coercions = tuple(coerce_strings(config, load_schema()))
    validate_config(config, source=source)
    methods: dict[str, dict[str, MethodFacts]] = {}
    for name, exp in config["experiments"].items():
        methods[name] = {}
        for vname, var in exp["variants"].items():
            m = make_method(var, exp, where=f"experiments.{name}.variants.{vname}")
            methods[name][vname] = MethodFacts(
                var["method"], tuple(m.stages), bool(m.estep_check), bool(m.init_needs_clean),
                tuple(k for k in range(1, exp["iterations"] + 1) if m.uses_previous(k)), bool(m.final_stage))
    weights = inception_weights_path((config.get("metrics") or {}).get("inception_weights"))
    return PlanFacts(methods, str(weights), key, coercions)


def cache_path(config: dict[str, Any], key: str) -> Path:
    return Path(config["results"]) / ".config" / f"plan-{key[:16]}.json"


def plan_facts(config: dict[str, Any], source: str = "config") -> PlanFacts:
    """The facts of ``config``: read from its plan file when one with the same key exists, else
    computed (validating the config) and written there (atomically: SLURM jobs parse concurrently).
    Either way ``config`` leaves with the nested --config overrides' strings coerced (in place)."""
    use_cache = os.environ.get("EMPRIOR_PLAN_CACHE", "1") != "0"
    key = plan_key(config) if use_cache and isinstance(config, dict) else None
    if key is None or not isinstance(config.get("results"), str):
        return compute_facts(config, source)
    path = cache_path(config, key)
    try:
        data = json.loads(path.read_text())
        if data.get("format") == FORMAT and data.get("key") == key:
            facts = PlanFacts.from_json(data)
            from emprior.config.loading import apply_coercions

            apply_coercions(config, facts.coercions)
            return facts
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent or unreadable: computed again below
    facts = compute_facts(config, source, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(facts.to_json(), indent=1, sort_keys=True))
    tmp.replace(path)
    return facts

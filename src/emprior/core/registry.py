"""One registry mechanism for every plug-in family (dataset, operator, network, posterior sampler,
diffusion sampler, EM method).

A plug-in declares its name and its options once, where it is defined::

    @dataclass(frozen=True)
    class MyOptions:
        maxiter: int = option(1, minimum=1)

    @POSTERIOR_SAMPLERS.register("mine", MyOptions)
    class Mine(PosteriorDenoiser): ...

The config schema's enums and option keys are generated from the registries
(:func:`emprior.config.schema.build_schema`), so nothing is listed twice; :meth:`Registry.options`
turns a config mapping into the options dataclass and a misspelled key into a one-line
:class:`~emprior.core.errors.ConfigError` naming the key and the allowed ones.
"""

from __future__ import annotations

import dataclasses
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Generic, Literal, Mapping, TypeVar

from emprior.core.errors import ConfigError

T = TypeVar("T")


def option(default: Any = dataclasses.MISSING, doc: str = "", **schema: Any) -> Any:
    """A dataclass field with JSON-schema constraints (``minimum``, ``exclusiveMinimum``, ``enum``, ...)
    and a one-line description; a list or dict default is copied per instance."""
    meta = {"schema": schema, "doc": doc}
    if isinstance(default, (list, dict)):
        return dataclasses.field(default_factory=lambda d=default: type(d)(d), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


@dataclass(frozen=True)
class NoOptions:
    """Options of a plug-in that takes none."""


def _type_schema(tp: Any) -> dict[str, Any]:
    """JSON schema of a dataclass field's annotation (the subset the plug-ins use)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return {}
    if origin is Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        inner = _type_schema(non_null[0]) if len(non_null) == 1 else {"anyOf": [_type_schema(a) for a in non_null]}
        if type(None) not in args:
            return inner
        if "type" in inner:
            kinds = inner["type"] if isinstance(inner["type"], list) else [inner["type"]]
            return {**inner, "type": [*kinds, "null"]}
        if "enum" in inner:
            return {"enum": [*inner["enum"], None]}
        return {"anyOf": [inner, {"type": "null"}]}
    if origin in (list, tuple) or tp in (list, tuple):
        item = args[0] if args else Any
        return {"type": "array", "items": _type_schema(item)} if item is not Any else {"type": "array"}
    if origin is dict or tp is dict:
        return {"type": "object"}
    simple = {bool: "boolean", int: "integer", float: "number", str: "string"}
    if tp in simple:
        return {"type": simple[tp]}
    raise TypeError(f"no JSON schema for option type {tp!r}")


def options_schema(options: type) -> dict[str, dict[str, Any]]:
    """``{key: JSON schema}`` of an options dataclass."""
    hints = typing.get_type_hints(options)
    out: dict[str, dict[str, Any]] = {}
    for f in dataclasses.fields(options):
        sch = _type_schema(hints[f.name])
        extra = dict(f.metadata.get("schema", {}))
        if "items" in extra and sch.get("type") == "array":
            sch["items"] = {**sch.get("items", {}), **extra.pop("items")}
        sch.update(extra)
        if f.metadata.get("doc"):
            sch["description"] = f.metadata["doc"]
        out[f.name] = sch
    return out


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    obj: T
    options: type
    summary: str


def _origin(obj: Any) -> tuple[str, str]:
    try:
        return getattr(obj, "__qualname__", repr(obj)), inspect.getfile(obj)
    except TypeError:
        return repr(obj), ""


class Registry(Generic[T]):
    """Named plug-ins of one family.

    ``family`` names it in errors ("posterior sampler"); ``key`` is the config key that names a
    plug-in (``method``, ``net``, ``name``, ``operator``, ``sampler``)."""

    def __init__(self, family: str, key: str):
        self.family = family
        self.key = key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, options: type | None = None, summary: str = "") -> Callable[[T], T]:
        """Decorator: register ``obj`` as ``name`` with its options dataclass (None: no options)."""

        def deco(obj: T) -> T:
            self.add(name, obj, options, summary)
            return obj

        return deco

    def add(self, name: str, obj: T, options: type | None = None, summary: str = "") -> None:
        options = NoOptions if options is None else options
        if not dataclasses.is_dataclass(options):
            raise TypeError(f"{self.family} {name!r}: options must be a dataclass, got {options!r}")
        old = self._entries.get(name)
        # The same definition imported twice (a plug-in file loaded by path and by pytest) is one plug-in.
        if old is not None and _origin(old.obj) != _origin(obj):
            raise ValueError(f"{self.family} {name!r} is registered twice ({_origin(old.obj)} and {_origin(obj)})")
        doc = summary or (inspect.getdoc(obj) or "").split("\n")[0]
        self._entries[name] = Entry(name, obj, options, doc)

    def names(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self):
        return iter(self._entries.values())

    def entry(self, name: str, where: str = "") -> Entry[T]:
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            at = f"{where}: " if where else ""
            raise ConfigError(f"{at}unknown {self.family} {name!r} (one of: {', '.join(self._entries)})") from None

    def get(self, name: str, where: str = "") -> T:
        return self.entry(name, where).obj

    def options(self, name: str, cfg: Mapping[str, Any] | None = None, where: str = "",
                ignore: tuple[str, ...] = ()) -> Any:
        """The options dataclass of ``name`` filled from ``cfg`` (its ``key`` and ``ignore`` keys skipped);
        an unknown key is a one-line ConfigError naming it and the allowed keys."""
        entry = self.entry(name, where)
        allowed = [f.name for f in dataclasses.fields(entry.options)]
        given = {k: v for k, v in (cfg or {}).items() if k != self.key and k not in ignore}
        unknown = sorted(set(given) - set(allowed))
        if unknown:
            at = f"{where}." if where else ""
            raise ConfigError(f"{at}{unknown[0]}: not an option of {self.family} {name!r} "
                              f"(allowed: {', '.join(allowed) or 'none'})")
        from jsonschema import Draft202012Validator
        from jsonschema.exceptions import best_match

        schema = {"type": "object", "properties": options_schema(entry.options)}
        error = best_match(Draft202012Validator(schema).iter_errors(dict(given)))
        if error is not None:
            key = ".".join(str(p) for p in error.absolute_path)
            at = ".".join(p for p in (where, key) if p)
            raise ConfigError(f"{at or name}: {error.message} ({self.family} {name!r})")
        try:
            return entry.options(**given)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where or name}: {exc}") from None

    def option_schemas(self) -> dict[str, dict[str, dict[str, Any]]]:
        return {e.name: options_schema(e.options) for e in self}

    def schema(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """A JSON schema for a config mapping ``{key: name, **options}``: the key's enum is the registered
        names, and the properties the union of every plug-in's options (each plug-in's own keys are
        checked by :meth:`options`)."""
        props: dict[str, Any] = {self.key: {"enum": self.names()}}
        for opts in self.option_schemas().values():
            for k, v in opts.items():
                if k in props and props[k] != v:
                    props[k] = {}  # two plug-ins type one key differently: each checks its own
                else:
                    props[k] = v
        props.update(extra or {})
        return {"type": "object", "additionalProperties": False, "required": [self.key], "properties": props}


def import_submodules(package: str, path: list[str]) -> None:
    """Import every module of a plug-in package (its ``__name__`` and ``__path__``), so that a new
    plug-in file registers itself without any other edit."""
    import importlib
    import pkgutil

    for module in pkgutil.iter_modules(path):
        importlib.import_module(f"{package}.{module.name}")


def asdict(options: Any) -> dict[str, Any]:
    """Options dataclass -> plain dict (for provenance and keyword arguments)."""
    return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}

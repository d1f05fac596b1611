"""The :class:`LinearOperator` protocol y = A x + e, e ~ N(0, noise_std^2 I) (Eq. 1), its registry
:data:`OPERATORS`, and the checks the operator kinds share.

Batch semantics: an operator holds the parameters of ``len(op)`` observations; applied to a batch
x of shape (B, *x_shape), the i-th parameters act on the i-th sample if ``len(op) == B`` and a
single set (``len(op) == 1``) is shared by the whole batch. Operators follow the dtype and device of
their input, and are differentiable (DPS back-propagates through A).

Where an operator measures only some coordinates of y (masks, k-space lines) y is exactly zero
elsewhere and :meth:`LinearOperator.observe` adds noise only where measured. Those coordinates
carry no information (the rows of A vanish there), so the posterior p(x | y) is the same as with
noise there; keeping y in the span of the measured coordinates keeps truncated CG in MMPS from
spending its few iterations on pure-noise entries.

An operator kind registers with an options dataclass; options declared with :func:`draw_option`
only say how the parameters were drawn, the others are needed to apply A::

    @dataclass(frozen=True)
    class PixelMaskOptions:
        deleted: float = draw_option(0.75, minimum=0, exclusiveMaximum=1)

    @register("pixel_mask", PixelMaskOptions)
    class PixelMaskOperator(LinearOperator): ...
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Any, Callable, ClassVar

import numpy as np
import torch
from torch import Tensor

from emprior.core.errors import EmpriorError
from emprior.core.registry import NoOptions, Registry, asdict, option


class OperatorError(EmpriorError, ValueError):
    """Bad operator input (shape, option or parameter); a ValueError with a one-line message."""


def as_shape(shape: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def fmt_shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


OPERATORS: Registry[type[LinearOperator]] = Registry("operator", "operator")


def draw_option(default: Any = dataclasses.MISSING, doc: str = "", **schema: Any) -> Any:
    """An :func:`~emprior.core.registry.option` that only records how the parameters were drawn: kept
    in ``attrs`` for provenance, not needed to rebuild A from its parameters."""
    f = option(default, doc, **schema)
    f.metadata = types.MappingProxyType({**f.metadata, "draw": True})
    return f


def register(kind: str, options: type = NoOptions) -> Callable[[type[LinearOperator]], type[LinearOperator]]:
    """Class decorator: register an operator ``kind`` with its options dataclass, and derive from the
    dataclass the class's ``option_defaults`` (the options A depends on) and ``draw_options`` (those
    declared with :func:`draw_option`), so every option name is declared once."""

    def deco(cls: type[LinearOperator]) -> type[LinearOperator]:
        fields = dataclasses.fields(options)
        static = [f for f in fields if not f.metadata.get("draw")]
        if any(f.default is dataclasses.MISSING for f in static):
            raise TypeError(f"operator {kind!r}: every static option needs a plain default")
        cls.kind = kind
        cls.Options = options
        cls.option_defaults = {f.name: f.default for f in static}
        cls.draw_options = tuple(f.name for f in fields if f.metadata.get("draw"))
        OPERATORS.add(kind, cls, options)
        return cls

    return deco


class LinearOperator:
    """A batch of linear maps A_i: R^{x_shape} -> R^{y_shape} with noise Sigma_y = noise_std^2 I.

    Subclasses are registered with :func:`register` (which sets ``kind``, ``Options``,
    ``option_defaults`` and ``draw_options`` from the options dataclass), define the per-observation
    parameter names ``param_names`` (numpy arrays with a leading observation dimension), and
    implement ``_check_params``, ``_y_shape``, ``_apply``, ``_adjoint`` (and ``_measured``,
    ``_tensors``, ``draw`` where needed). Operators without parameters have length 1.
    """

    # set by :func:`register` from the options dataclass
    kind: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    option_defaults: ClassVar[dict[str, Any]] = {}
    # options that only describe how parameters were drawn (kept in attrs for provenance)
    draw_options: ClassVar[tuple[str, ...]] = ()
    param_names: ClassVar[tuple[str, ...]] = ()

    def __init__(self, x_shape: Any, noise_std: float, params: dict[str, np.ndarray] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.x_shape: tuple[int, ...] = as_shape(x_shape)
        if any(s <= 0 for s in self.x_shape):
            raise OperatorError(f"{self.kind}: x_shape {fmt_shape(self.x_shape)} has a non-positive size")
        noise_std = float(noise_std)
        if not math.isfinite(noise_std) or noise_std < 0:
            raise OperatorError(f"{self.kind}: noise_std must be finite and >= 0, got {noise_std}")
        self.noise_std: float = noise_std
        known = set(self.option_defaults) | set(self.draw_options)
        unknown = sorted(set(options or {}) - known)
        if unknown:
            raise OperatorError(f"{self.kind}: unknown option(s) {unknown}; expected some of {sorted(known)}")
        self.options: dict[str, Any] = {**self.option_defaults, **(options or {})}
        params = dict(params or {})
        missing = [k for k in self.param_names if k not in params]
        extra = sorted(set(params) - set(self.param_names))
        if missing or extra:
            raise OperatorError(f"{self.kind}: parameters {sorted(params)} do not match the expected "
                                f"{list(self.param_names)}")
        self._params: dict[str, np.ndarray] = {k: np.asarray(params[k]) for k in self.param_names}
        lengths = {k: (v.shape[0] if v.ndim else -1) for k, v in self._params.items()}
        if len(set(lengths.values())) > 1 or any(n < 1 for n in lengths.values()):
            raise OperatorError(f"{self.kind}: parameters need one common leading (observation) "
                                f"dimension >= 1, got {lengths}")
        self._len = next(iter(lengths.values()), 1)
        self._check_params()
        self.y_shape: tuple[int, ...] = self._y_shape()
        self._cache: dict[tuple[torch.dtype, torch.device], dict[str, Tensor]] = {}

    # -- to implement --------------------------------------------------------------------------

    def _y_shape(self) -> tuple[int, ...]:
        return self.x_shape

    def _check_params(self) -> None:
        """Validate (and normalise the dtype of) ``self._params`` and ``self.options``."""

    def _tensors(self, dtype: torch.dtype, device: torch.device) -> dict[str, Tensor]:
        """Parameters as tensors (leading dim len(self)), built once per dtype/device."""
        return {k: torch.as_tensor(v, device=device).to(dtype if v.dtype.kind in "fb" else torch.long)
                for k, v in self._params.items()}

    def _apply(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def _adjoint(self, y: Tensor, p: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    def _measured(self, p: dict[str, Tensor]) -> Tensor | None:
        """0/1 tensor (len or 1, *y_shape) of measured y coordinates; None if all are."""
        return None

    @classmethod
    def draw(cls, n: int, x_shape: tuple[int, ...], noise_std: float, rng: np.random.Generator,
             opts: Any) -> LinearOperator:
        """Random parameters for n observations from the options dataclass ``opts`` (shared operators
        return len 1)."""
        return cls(x_shape, noise_std, {}, asdict(opts))

    # -- protocol ------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    @property
    def noise_var(self) -> float:
        """Sigma_y = noise_var * I."""
        return self.noise_std**2

    def _params_for(self, t: Tensor) -> dict[str, Tensor]:
        key = (t.dtype, t.device)
        if key not in self._cache:
            self._cache[key] = self._tensors(t.dtype, t.device)
        return self._cache[key]

    def _check_batch(self, t: Tensor, shape: tuple[int, ...], name: str, what: str) -> None:
        if not isinstance(t, Tensor):
            raise OperatorError(f"{self.kind}.{name}: expected a torch.Tensor, got {type(t).__name__}")
        if t.dim() != len(shape) + 1 or tuple(t.shape[1:]) != shape:
            raise OperatorError(f"{self.kind}.{name}: expected {what} of shape (B, {', '.join(map(str, shape))}), "
                                f"got {fmt_shape(tuple(t.shape))}")
        if not t.is_floating_point():
            raise OperatorError(f"{self.kind}.{name}: expected a real floating-point {what}, got {t.dtype}")
        if self._len not in (1, t.shape[0]):
            raise OperatorError(f"{self.kind}.{name}: operator holds {self._len} observations but {what} "
                                f"has batch size {t.shape[0]} (need equal, or an operator of length 1)")

    def A(self, x: Tensor) -> Tensor:
        """A x: (B, *x_shape) -> (B, *y_shape)."""
        self._check_batch(x, self.x_shape, "A", "x")
        y = self._apply(x, self._params_for(x))
        return y.expand(x.shape[0], *self.y_shape) if y.shape[0] != x.shape[0] else y

    def At(self, y: Tensor) -> Tensor:
        """A^T y: (B, *y_shape) -> (B, *x_shape), the exact adjoint of :meth:`A`."""
        self._check_batch(y, self.y_shape, "At", "y")
        x = self._adjoint(y, self._params_for(y))
        return x.expand(y.shape[0], *self.x_shape) if x.shape[0] != y.shape[0] else x

    __call__ = A

    def measured(self, like: Tensor) -> Tensor | None:
        """0/1 tensor broadcastable to (B, *y_shape) marking measured y coordinates (None: all)."""
        return self._measured(self._params_for(like))

    def observe(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """y = A x + noise_std * eps, eps ~ N(0, I) on the measured coordinates (Eq. 1)."""
        y = self.A(x)
        eps = torch.randn(y.shape, generator=generator, dtype=y.dtype, device=y.device)
        mask = self.measured(y)
        if mask is not None:
            eps = eps * mask
        return y + self.noise_std * eps

    def __getitem__(self, idx: Any) -> LinearOperator:
        """The operator of a subset of observations; a shared operator (len 1) returns itself."""
        if self._len == 1:
            return self
        if isinstance(idx, Tensor):
            idx = idx.detach().cpu().numpy()
        if isinstance(idx, (int, np.integer)):
            if not -self._len <= int(idx) < self._len:
                raise IndexError(f"{self.kind}: index {int(idx)} out of range for {self._len} observations")
            idx = [int(idx)]
        try:
            params = {k: v[idx] for k, v in self._params.items()}
        except IndexError as exc:
            raise IndexError(f"{self.kind}: bad observation index ({exc})") from None
        if any(v.shape[0] == 0 for v in params.values()):
            raise IndexError(f"{self.kind}: index selects no observation")
        return type(self)(self.x_shape, self.noise_std, params, self._stored_options())

    def params(self) -> dict[str, np.ndarray]:
        """Per-observation parameters, each with leading dimension len(self)."""
        return {k: v.copy() for k, v in self._params.items()}

    def _stored_options(self) -> dict[str, Any]:
        return dict(self.options)

    def attrs(self) -> dict[str, Any]:
        """JSON-able static settings from which :meth:`from_params` rebuilds the operator."""
        return {"kind": self.kind, "x_shape": list(self.x_shape), "y_shape": list(self.y_shape),
                "noise_std": self.noise_std, "options": _jsonable(self._stored_options())}

    @classmethod
    def from_params(cls, params: dict[str, np.ndarray], attrs: dict[str, Any]) -> LinearOperator:
        if attrs.get("kind", cls.kind) != cls.kind:
            raise OperatorError(f"{cls.kind}: attrs describe a '{attrs.get('kind')}' operator")
        for key in ("x_shape", "noise_std"):
            if key not in attrs:
                raise OperatorError(f"{cls.kind}: attrs lack '{key}'")
        op = cls(attrs["x_shape"], attrs["noise_std"], params, attrs.get("options") or {})
        if "y_shape" in attrs and as_shape(attrs["y_shape"]) != op.y_shape:
            raise OperatorError(f"{cls.kind}: attrs y_shape {fmt_shape(as_shape(attrs['y_shape']))} does not match "
                                f"the rebuilt {fmt_shape(op.y_shape)}")
        return op

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return (f"{type(self).__name__}(n={self._len}, x_shape={self.x_shape}, y_shape={self.y_shape}, "
                f"noise_std={self.noise_std}{', ' + opts if opts else ''})")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def image_shape(kind: str, x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(x_shape) != 3:
        raise OperatorError(f"{kind}: x_shape must be (C, H, W), got {fmt_shape(x_shape)}")
    return x_shape  # type: ignore[return-value]


def positive_int(kind: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise OperatorError(f"{kind}: option {name} must be a positive integer, got {value!r}")
    return int(value)


def bool_param(kind: str, name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if arr.shape[1:] != shape:
        raise OperatorError(f"{kind}: parameter '{name}' must have shape (n, {', '.join(map(str, shape))}), "
                            f"got {fmt_shape(arr.shape)}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise OperatorError(f"{kind}: parameter '{name}' must be binary (0/1)")
        arr = arr.astype(np.bool_)
    return arr


"""Linear observation operators y = A x + e, e ~ N(0, Sigma_y), Sigma_y = noise_std^2 I (Eq. 1).

Every forward process of the paper is linear Gaussian, p(y | x, A) = N(y | A x, Sigma_y) (Sec. 4), and
MMPS needs only the products A v and A^T u (Eqs. 18-20, Alg. 3/4). One :class:`LinearOperator`
protocol covers all of them:

``pixel_mask``      A = diag(mask), one binary mask per observation shared across channels (CIFAR-10,
                    digits, FFHQ random inpainting; Sec. 5.2, App. C)
``box_mask``        A = diag(mask) with a randomly placed square hole (FFHQ box inpainting, Table 4)
``projection``      dense A in R^{m x d}, rows uniform on S^{d-1} (manifold experiment, Sec. 5.1)
``fourier_lines``   A = M F restricted to real x, F the orthonormal 2-D DFT, M keeps random columns of
                    k-space (accelerated MRI, Sec. 5.3)
``blur``            A x = k * x, Gaussian or random motion kernel (FFHQ motion deblur, Table 4)
``downsample``      separable antialiased bicubic down-sampling by an integer factor (FFHQ x4)
``crop``            centred crop
``identity``        A = I (denoising)

Batch semantics: an operator holds the parameters of ``len(op)`` observations; applied to a batch
x of shape (B, *x_shape), the i-th parameters act on the i-th sample if ``len(op) == B`` and a
single set (``len(op) == 1``) is shared by the whole batch. Operators follow the dtype and device of
their input, and are differentiable (DPS back-propagates through A).

Where an operator measures only some coordinates of y (masks, k-space lines) y is exactly zero
elsewhere and :meth:`LinearOperator.observe` adds noise only where measured. Those coordinates
carry no information (the rows of A vanish there), so the posterior p(x | y) is the same as with
noise there; keeping y in the span of the measured coordinates keeps truncated CG in MMPS from
spending its few iterations on pure-noise entries.
"""

from __future__ import annotations

import json
import math
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from emprior.core.errors import EmpriorError

__all__ = [
    "OPERATORS",
    "BlurOperator",
    "BoxMaskOperator",
    "CropOperator",
    "DownsampleOperator",
    "FourierLinesOperator",
    "IdentityOperator",
    "LinearOperator",
    "OperatorError",
    "PixelMaskOperator",
    "ProjectionOperator",
    "bicubic_downsample_matrix",
    "gaussian_kernel",
    "load_operator_arrays",
    "make_operator",
    "motion_kernel",
    "operator_from_arrays",
    "save_operator_arrays",
]


class OperatorError(EmpriorError, ValueError):
    """Bad operator input (shape, option or parameter); a ValueError with a one-line message."""


def _shape(shape: Any) -> tuple[int, ...]:
    return tuple(int(s) for s in shape)


def _fmt(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(s) for s in shape) + ")"


# ---------------------------------------------------------------------------------------------
# Base class and registry
# ---------------------------------------------------------------------------------------------

OPERATORS: dict[str, type[LinearOperator]] = {}


def _register(cls: type[LinearOperator]) -> type[LinearOperator]:
    OPERATORS[cls.kind] = cls
    return cls


class LinearOperator:
    """A batch of linear maps A_i: R^{x_shape} -> R^{y_shape} with noise Sigma_y = noise_std^2 I.

    Subclasses define ``kind``, the per-observation parameter names ``param_names`` (numpy arrays
    with a leading observation dimension), the static options the map depends on
    (``option_defaults``) and those that only record how parameters were drawn (``draw_options``),
    and implement ``_check_params``, ``_y_shape``, ``_apply``, ``_adjoint`` (and ``_measured``,
    ``_tensors``, ``draw`` where needed). Operators without parameters have length 1.
    """

    kind: ClassVar[str] = ""
    param_names: ClassVar[tuple[str, ...]] = ()
    option_defaults: ClassVar[dict[str, Any]] = {}
    # options that only describe how parameters were drawn (kept in attrs for provenance)
    draw_options: ClassVar[tuple[str, ...]] = ()

    def __init__(self, x_shape: Any, noise_std: float, params: dict[str, np.ndarray] | None = None,
                 options: dict[str, Any] | None = None) -> None:
        self.x_shape: tuple[int, ...] = _shape(x_shape)
        if any(s <= 0 for s in self.x_shape):
            raise OperatorError(f"{self.kind}: x_shape {_fmt(self.x_shape)} has a non-positive size")
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
             **options: Any) -> LinearOperator:
        """Random parameters for n observations (shared operators return len 1)."""
        return cls(x_shape, noise_std, {}, options)

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
                                f"got {_fmt(tuple(t.shape))}")
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
        if "y_shape" in attrs and _shape(attrs["y_shape"]) != op.y_shape:
            raise OperatorError(f"{cls.kind}: attrs y_shape {_fmt(_shape(attrs['y_shape']))} does not match "
                                f"the rebuilt {_fmt(op.y_shape)}")
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


def _image_shape(kind: str, x_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(x_shape) != 3:
        raise OperatorError(f"{kind}: x_shape must be (C, H, W), got {_fmt(x_shape)}")
    return x_shape  # type: ignore[return-value]


def _positive_int(kind: str, name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < 1:
        raise OperatorError(f"{kind}: option {name} must be a positive integer, got {value!r}")
    return int(value)


def _bool_param(kind: str, name: str, arr: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if arr.shape[1:] != shape:
        raise OperatorError(f"{kind}: parameter '{name}' must have shape (n, {', '.join(map(str, shape))}), "
                            f"got {_fmt(arr.shape)}")
    if arr.dtype != np.bool_:
        if not np.isin(arr, (0, 1)).all():
            raise OperatorError(f"{kind}: parameter '{name}' must be binary (0/1)")
        arr = arr.astype(np.bool_)
    return arr


# ---------------------------------------------------------------------------------------------
# Masks
# ---------------------------------------------------------------------------------------------

@_register
class PixelMaskOperator(LinearOperator):
    """A = diag(m) with m in {0, 1}^{H x W} shared by the C channels; y has the shape of x.

    Each pixel is deleted independently with probability ``deleted`` (rho): P(m_ij = 0) = rho.
    A is an orthogonal projection (A = A^T = A^2), so A^T y = m * y.
    """

    kind = "pixel_mask"
    param_names = ("mask",)
    draw_options = ("deleted",)

    def _check_params(self) -> None:
        _, h, w = _image_shape(self.kind, self.x_shape)
        self._params["mask"] = _bool_param(self.kind, "mask", self._params["mask"], (h, w))

    def _apply(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return x * p["mask"].unsqueeze(1)

    _adjoint = _apply

    def _measured(self, p: dict[str, Tensor]) -> Tensor:
        return p["mask"].unsqueeze(1)

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, deleted: float = 0.75, **options):
        _, h, w = _image_shape(cls.kind, _shape(x_shape))
        if not 0.0 <= float(deleted) < 1.0:
            raise OperatorError(f"{cls.kind}: option deleted must be in [0, 1), got {deleted!r}")
        mask = rng.random((n, h, w)) >= float(deleted)
        return cls(x_shape, noise_std, {"mask": mask}, {"deleted": float(deleted), **options})


@_register
class BoxMaskOperator(LinearOperator):
    """A = diag(m) with m = 0 on a box x box square, shared by the channels; y has the shape of x.

    The top-left corner (t, l) is uniform on [margin, H - margin - box] x [margin, W - margin - box]
    (DPS's box inpainting draws it with margin 16 on 256 x 256 images; the default margin is 0).
    """

    kind = "box_mask"
    param_names = ("corner",)
    option_defaults: ClassVar[dict[str, Any]] = {"box": None}
    draw_options = ("margin",)

    def _check_params(self) -> None:
        _, h, w = _image_shape(self.kind, self.x_shape)
        box = self.options["box"]
        box = min(h, w) // 2 if box is None else _positive_int(self.kind, "box", box)
        if box > min(h, w):
            raise OperatorError(f"{self.kind}: box {box} does not fit in an image of size {h}x{w}")
        self.options["box"] = box
        corner = self._params["corner"]
        if corner.shape[1:] != (2,) or corner.dtype.kind not in "iu":
            raise OperatorError(f"{self.kind}: parameter 'corner' must be integers of shape (n, 2), "
                                f"got {corner.dtype} {_fmt(corner.shape)}")
        if (corner < 0).any() or (corner[:, 0] > h - box).any() or (corner[:, 1] > w - box).any():
            raise OperatorError(f"{self.kind}: a box corner puts the {box}x{box} box outside {h}x{w}")
        self._params["corner"] = corner.astype(np.int64)

    def _tensors(self, dtype, device):
        # the mask itself is what A needs; the corners are what is stored
        _, h, w = self.x_shape
        box = self.options["box"]
        corner = torch.as_tensor(self._params["corner"], device=device)
        rows = torch.arange(h, device=device)
        cols = torch.arange(w, device=device)
        t, l = corner[:, 0, None], corner[:, 1, None]
        in_r = (rows >= t) & (rows < t + box)                        # (n, H)
        in_c = (cols >= l) & (cols < l + box)                        # (n, W)
        hole = in_r[:, :, None] & in_c[:, None, :]
        return {"mask": (~hole).to(dtype).unsqueeze(1)}              # (n, 1, H, W)

    def _apply(self, x, p):
        return x * p["mask"]

    _adjoint = _apply

    def _measured(self, p):
        return p["mask"]

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, box: int | None = None, margin: int = 0, **options):
        _, h, w = _image_shape(cls.kind, _shape(x_shape))
        box = min(h, w) // 2 if box is None else _positive_int(cls.kind, "box", box)
        margin = int(margin)
        if margin < 0 or box + 2 * margin > min(h, w):
            raise OperatorError(f"{cls.kind}: box {box} with margin {margin} does not fit in {h}x{w}")
        top = rng.integers(margin, h - margin - box, size=n, endpoint=True)
        left = rng.integers(margin, w - margin - box, size=n, endpoint=True)
        corner = np.stack([top, left], axis=1).astype(np.int64)
        return cls(x_shape, noise_std, {"corner": corner}, {"box": box, "margin": margin, **options})


# ---------------------------------------------------------------------------------------------
# Random projections (manifold experiment)
# ---------------------------------------------------------------------------------------------

@_register
class ProjectionOperator(LinearOperator):
    """Dense A_i in R^{m x d} (x flattened to d = prod(x_shape)), y_shape (m,).

    Rows are drawn uniformly on the unit sphere S^{d-1} by normalising standard Gaussian vectors
    (Sec. 5.1: m = 2, d = 5).
    """

    kind = "projection"
    param_names = ("A",)
    draw_options = ("m",)

    def _check_params(self) -> None:
        A = self._params["A"]
        d = math.prod(self.x_shape)
        if A.ndim != 3 or A.shape[2] != d or A.shape[1] < 1:
            raise OperatorError(f"{self.kind}: parameter 'A' must have shape (n, m, {d}), got {_fmt(A.shape)}")
        if A.dtype.kind != "f" or not np.isfinite(A).all():
            raise OperatorError(f"{self.kind}: parameter 'A' must be finite floats")

    def _y_shape(self):
        return (int(self._params["A"].shape[1]),)

    def _apply(self, x, p):
        return (p["A"] @ x.reshape(x.shape[0], -1, 1)).squeeze(-1)

    def _adjoint(self, y, p):
        x = (p["A"].transpose(1, 2) @ y.unsqueeze(-1)).squeeze(-1)
        return x.reshape(x.shape[0], *self.x_shape)

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, m: int = 2, **options):
        m = _positive_int(cls.kind, "m", m)
        d = math.prod(_shape(x_shape))
        A = rng.standard_normal((n, m, d))
        A /= np.linalg.norm(A, axis=-1, keepdims=True)
        return cls(x_shape, noise_std, {"A": A}, {"m": m, **options})


# ---------------------------------------------------------------------------------------------
# Fourier line sub-sampling (accelerated MRI)
# ---------------------------------------------------------------------------------------------

@_register
class FourierLinesOperator(LinearOperator):
    """A x = (Re, Im)(M F x) for real x of shape (1, H, W); y_shape (2, H, W).

    F is the orthonormal 2-D DFT (``torch.fft.fft2(norm="ortho")``, native frequency order, DC at
    index 0) and M keeps whole columns of k-space (a fixed horizontal frequency k_x, every k_y),
    ``lines[i, k_x] = 1``. Since x is real and F unitary, the adjoint of this real map is
        A^T y = Re(F^H (M (y_re + i y_im))).
    A^T A = Re(F^H M F .) = F^H ((M + M') / 2) F with M' the mirrored mask (k_x -> -k_x), because
    line -k_x of a real image is the conjugate of line k_x. So A^T A (and A A^T) is an orthogonal
    projection iff the mask is mirror-symmetric (option ``symmetric``); otherwise the lines seen
    only on one side have singular value 1/sqrt(2).

    Drawing (Jalal et al. 2021, as in the official DiEM code): the ``n_c`` lowest frequencies
    (signed k_x in [-n_c/2, n_c/2)) are always kept, every other line with probability
    p = (W/R - n_c) / (W - n_c), so that a fraction 1/R of the lines is kept on average.
    Default n_c = round(W * 0.375 / R) (20 of 320 lines at R = 6, as the official code).
    """

    kind = "fourier_lines"
    param_names = ("lines",)
    draw_options = ("acceleration", "center_fraction", "symmetric")

    def _check_params(self) -> None:
        c, _, w = _image_shape(self.kind, self.x_shape)
        if c != 1:
            raise OperatorError(f"{self.kind}: x_shape must be (1, H, W) (a real single-channel image), "
                                f"got {_fmt(self.x_shape)}")
        self._params["lines"] = _bool_param(self.kind, "lines", self._params["lines"], (w,))

    def _y_shape(self):
        return (2, self.x_shape[1], self.x_shape[2])

    def _tensors(self, dtype, device):
        return {"mask": torch.as_tensor(self._params["lines"], device=device).to(dtype)[:, None, :]}  # (n,1,W)

    def _apply(self, x, p):
        k = torch.fft.fft2(x[:, 0], norm="ortho") * p["mask"]
        return torch.stack([k.real, k.imag], dim=1)

    def _adjoint(self, y, p):
        k = torch.complex(y[:, 0], y[:, 1]) * p["mask"]
        return torch.fft.ifft2(k, norm="ortho").real.unsqueeze(1)

    def _measured(self, p):
        return p["mask"].unsqueeze(1)                                  # (n, 1, 1, W)

    @staticmethod
    def signed_frequencies(w: int) -> np.ndarray:
        """Signed k_x of each native-order column: 0, 1, ..., -2, -1 (``np.fft.fftfreq(w) * w``)."""
        return np.rint(np.fft.fftfreq(w) * w).astype(np.int64)

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, acceleration: float = 6.0, center_fraction: float | None = None,
             symmetric: bool = False, **options):
        x_shape = _shape(x_shape)
        _, _, w = _image_shape(cls.kind, x_shape)
        R = float(acceleration)
        if not (math.isfinite(R) and 1.0 <= R <= w):
            raise OperatorError(f"{cls.kind}: option acceleration must be in [1, W={w}], got {acceleration!r}")
        cf = 0.375 / R if center_fraction is None else float(center_fraction)
        if not 0.0 <= cf <= 1.0 / R:
            raise OperatorError(f"{cls.kind}: option center_fraction must be in [0, 1/acceleration="
                                f"{1.0 / R:.4g}], got {center_fraction!r}")
        freq = cls.signed_frequencies(w)
        n_c = min(round(cf * w), math.floor(w / R))
        if symmetric:
            half = (n_c - 1) // 2 if n_c > 0 else -1
            centre = np.abs(freq) <= half
        else:
            centre = (freq >= -(n_c // 2)) & (freq < n_c - n_c // 2)
        n_c = int(centre.sum())
        p = (w / R - n_c) / (w - n_c) if w > n_c else 0.0
        if symmetric:
            # one coin per mirror pair {k, -k}: column k (native index) and (-k) mod w share a draw
            u = rng.random((n, w))
            rep = np.minimum(np.arange(w), (-np.arange(w)) % w)
            keep = u[:, rep] < p
        else:
            keep = rng.random((n, w)) < p
        lines = keep | centre[None, :]
        opts = {"acceleration": R, "center_fraction": cf, "symmetric": bool(symmetric), **options}
        return cls(x_shape, noise_std, {"lines": lines}, opts)


# ---------------------------------------------------------------------------------------------
# Blur
# ---------------------------------------------------------------------------------------------

def gaussian_kernel(size: int, std: float) -> np.ndarray:
    """Isotropic Gaussian k_ab proportional to exp(-((a - c)^2 + (b - c)^2) / (2 std^2)), c = (size - 1) / 2,
    normalised to sum 1; shape (size, size), float64."""
    size = int(size)
    if size < 1 or not (float(std) > 0):
        raise OperatorError(f"gaussian_kernel: need size >= 1 and std > 0, got size={size}, std={std}")
    t = np.arange(size) - (size - 1) / 2
    g = np.exp(-0.5 * (t / float(std)) ** 2)
    k = np.outer(g, g)
    return k / k.sum()


def motion_kernel(size: int, intensity: float, rng: np.random.Generator) -> np.ndarray:
    """A random camera-shake kernel of shape (size, size), nonnegative, summing to 1.

    A trajectory of ``4 * size`` steps starts in a uniform direction; its heading performs a
    Gaussian random walk whose total standard deviation is ``2 pi * intensity`` (intensity 0: a
    straight segment; larger intensity: more curved and tangled paths), and whose length grows with
    intensity, L = 0.75 (size - 1)(0.5 + 0.5 u)(1 + intensity), u ~ U(0, 1). The path is centred
    on its mean (so the blur does not shift the image), shrunk if needed to fit in the window,
    sampled every <= 1/4 pixel and splatted bilinearly onto the grid.
    """
    size = int(size)
    intensity = float(intensity)
    if size < 3 or not 0.0 <= intensity <= 1.0:
        raise OperatorError(f"motion_kernel: need size >= 3 and intensity in [0, 1], "
                            f"got size={size}, intensity={intensity}")
    steps = 4 * size
    length = 0.75 * (size - 1) * (0.5 + 0.5 * rng.random()) * (1.0 + intensity)
    heading = rng.uniform(0.0, 2 * np.pi) + np.cumsum(
        rng.standard_normal(steps) * (2 * np.pi * intensity / math.sqrt(steps)))
    # speed jitter makes the exposure uneven along the path, as real camera shake does
    speed = np.exp(0.5 * intensity * rng.standard_normal(steps))
    step = (length / steps) * speed / speed.mean()
    path = np.concatenate([[[0.0, 0.0]], np.cumsum(
        np.stack([step * np.sin(heading), step * np.cos(heading)], axis=1), axis=0)])
    # dense resampling: points every <= 0.25 px along each segment
    seg = np.diff(path, axis=0)
    per = np.maximum(1, np.ceil(np.hypot(seg[:, 0], seg[:, 1]) / 0.25)).astype(np.int64)
    which = np.repeat(np.arange(len(seg)), per)
    frac = (np.arange(per.sum()) - np.repeat(np.cumsum(per) - per, per) + 1) / per[which]
    pts = np.concatenate([path[:1], path[which] + seg[which] * frac[:, None]])
    pts -= pts.mean(axis=0)
    reach = np.abs(pts).max()
    room = (size - 1) / 2 - 1.0
    if reach > room > 0:
        pts *= room / reach
    pts += (size - 1) / 2
    i0 = np.floor(pts).astype(np.int64)
    f = pts - i0
    k = np.zeros((size, size))
    for di in (0, 1):
        for dj in (0, 1):
            wgt = (f[:, 0] if di else 1 - f[:, 0]) * (f[:, 1] if dj else 1 - f[:, 1])
            np.add.at(k, (np.clip(i0[:, 0] + di, 0, size - 1), np.clip(i0[:, 1] + dj, 0, size - 1)), wgt)
    return k / k.sum()


@_register
class BlurOperator(LinearOperator):
    """A x = k_i * x (true 2-D convolution of every channel, kernel centred), "same" output size.

    ``padding="zero"``: y_ij = sum_ab k_ab x_{i+c-a, j+c-b} with x = 0 outside the image
    (c = (K - 1) / 2), computed exactly by an FFT of size (H + K - 1, W + K - 1); the adjoint pads
    y, correlates with k (conjugate spectrum) and crops. ``padding="circular"``: periodic
    boundaries, FFT of size (H, W). Both adjoints are exact up to rounding.
    Kernels: ``kernel="motion"`` draws one :func:`motion_kernel` per observation (``shared=True``:
    one for all); ``kernel="gaussian"`` is one deterministic :func:`gaussian_kernel` (len 1).
    """

    kind = "blur"
    param_names = ("kernel",)
    option_defaults: ClassVar[dict[str, Any]] = {"padding": "zero"}
    draw_options = ("kernel", "size", "intensity", "std", "shared")

    def _check_params(self) -> None:
        _, h, w = _image_shape(self.kind, self.x_shape)
        k = self._params["kernel"]
        if k.ndim != 3 or k.shape[1] != k.shape[2] or k.shape[1] % 2 == 0:
            raise OperatorError(f"{self.kind}: parameter 'kernel' must have shape (n, K, K) with K odd, "
                                f"got {_fmt(k.shape)}")
        if k.dtype.kind != "f" or not np.isfinite(k).all():
            raise OperatorError(f"{self.kind}: parameter 'kernel' must be finite floats")
        if self.options["padding"] not in ("zero", "circular"):
            raise OperatorError(f"{self.kind}: option padding must be 'zero' or 'circular', "
                                f"got {self.options['padding']!r}")
        if self.options["padding"] == "circular" and k.shape[1] > min(h, w):
            raise OperatorError(f"{self.kind}: circular padding needs K <= min(H, W), got K={k.shape[1]} "
                                f"for {h}x{w}")

    def _grid(self) -> tuple[int, int]:
        _, h, w = self.x_shape
        K = self._params["kernel"].shape[1]
        return (h + K - 1, w + K - 1) if self.options["padding"] == "zero" else (h, w)

    def _tensors(self, dtype, device):
        k = torch.as_tensor(self._params["kernel"], device=device).to(dtype)     # (n, K, K)
        K = k.shape[-1]
        L = self._grid()
        kp = torch.zeros(k.shape[0], *L, dtype=dtype, device=device)
        kp[:, :K, :K] = k
        if self.options["padding"] == "circular":
            # move the kernel centre to (0, 0) so that circular convolution is "same"
            kp = torch.roll(kp, shifts=(-(K // 2), -(K // 2)), dims=(1, 2))
        return {"kernel_fft": torch.fft.rfft2(kp).unsqueeze(1)}                  # (n, 1, L1, L2//2+1)

    def _apply(self, x, p):
        _, h, w = self.x_shape
        L = self._grid()
        if self.options["padding"] == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(x) * p["kernel_fft"], s=L)
        c = self._params["kernel"].shape[1] // 2
        xp = F.pad(x, (0, L[1] - w, 0, L[0] - h))
        full = torch.fft.irfft2(torch.fft.rfft2(xp) * p["kernel_fft"], s=L)
        return full[..., c:c + h, c:c + w]

    def _adjoint(self, y, p):
        _, h, w = self.x_shape
        L = self._grid()
        if self.options["padding"] == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(y) * p["kernel_fft"].conj(), s=L)
        c = self._params["kernel"].shape[1] // 2
        yp = F.pad(y, (c, L[1] - w - c, c, L[0] - h - c))
        full = torch.fft.irfft2(torch.fft.rfft2(yp) * p["kernel_fft"].conj(), s=L)
        return full[..., :h, :w]

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, kernel: str = "motion", size: int = 61, intensity: float = 0.5,
             std: float = 3.0, shared: bool = False, **options):
        size = _positive_int(cls.kind, "size", size)
        if size % 2 == 0:
            raise OperatorError(f"{cls.kind}: option size must be odd, got {size}")
        if kernel == "gaussian":
            kernels = gaussian_kernel(size, std)[None]
            drawn = {"kernel": "gaussian", "size": size, "std": float(std)}
        elif kernel == "motion":
            kernels = np.stack([motion_kernel(size, intensity, rng) for _ in range(1 if shared else n)])
            drawn = {"kernel": "motion", "size": size, "intensity": float(intensity), "shared": bool(shared)}
        else:
            raise OperatorError(f"{cls.kind}: option kernel must be 'motion' or 'gaussian', got {kernel!r}")
        return cls(x_shape, noise_std, {"kernel": kernels}, {**drawn, **options})


# ---------------------------------------------------------------------------------------------
# Bicubic down-sampling
# ---------------------------------------------------------------------------------------------

def _keys_cubic(t: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel (a = -0.5: Matlab/PIL bicubic)."""
    t = np.abs(t)
    return np.where(t <= 1, (a + 2) * t**3 - (a + 3) * t**2 + 1,
                    np.where(t < 2, a * t**3 - 5 * a * t**2 + 8 * a * t - 4 * a, 0.0))


def bicubic_downsample_matrix(n: int, factor: int) -> np.ndarray:
    """(n / factor, n) matrix of antialiased bicubic down-sampling along one axis.

    Output sample i sits at input coordinate u_i = (i + 1/2) f - 1/2 (pixel centres aligned); its
    weights are w_j proportional to h((j - u_i) / f) with h Keys' cubic (a = -0.5) stretched by f
    (the antialiasing of Matlab's imresize / PIL), normalised to sum 1. Taps outside [0, n) are
    folded back by half-sample symmetric reflection, so every row still sums to 1.
    """
    n, f = int(n), int(factor)
    if f < 1 or n % f:
        raise OperatorError(f"bicubic_downsample_matrix: size {n} is not a multiple of factor {f}")
    M = np.zeros((n // f, n))
    for i in range(n // f):
        u = (i + 0.5) * f - 0.5
        j = np.arange(math.floor(u - 2 * f), math.ceil(u + 2 * f) + 1)
        wgt = _keys_cubic((j - u) / f)
        wgt /= wgt.sum()
        period = 2 * n
        jj = np.mod(j, period)
        jj = np.where(jj >= n, period - 1 - jj, jj)
        np.add.at(M[i], jj, wgt)
    return M


@_register
class DownsampleOperator(LinearOperator):
    """A x = D_H x D_W^T per channel, D the separable antialiased bicubic matrices of
    :func:`bicubic_downsample_matrix`; y_shape (C, H / f, W / f); A^T y = D_H^T y D_W."""

    kind = "downsample"
    option_defaults: ClassVar[dict[str, Any]] = {"factor": 4}

    def _check_params(self) -> None:
        _, h, w = _image_shape(self.kind, self.x_shape)
        f = self.options["factor"] = _positive_int(self.kind, "factor", self.options["factor"])
        if h % f or w % f:
            raise OperatorError(f"{self.kind}: image size {h}x{w} is not a multiple of factor {f}")

    def _y_shape(self):
        c, h, w = self.x_shape
        f = self.options["factor"]
        return (c, h // f, w // f)

    def _tensors(self, dtype, device):
        _, h, w = self.x_shape
        f = self.options["factor"]
        return {"Dh": torch.as_tensor(bicubic_downsample_matrix(h, f), dtype=dtype, device=device),
                "Dw": torch.as_tensor(bicubic_downsample_matrix(w, f), dtype=dtype, device=device)}

    def _apply(self, x, p):
        return p["Dh"] @ x @ p["Dw"].T

    def _adjoint(self, y, p):
        return p["Dh"].T @ y @ p["Dw"]


# ---------------------------------------------------------------------------------------------
# Crop and identity
# ---------------------------------------------------------------------------------------------

@_register
class CropOperator(LinearOperator):
    """Centred crop to (h, w): top = (H - h) // 2, left = (W - w) // 2; A^T zero-pads back."""

    kind = "crop"
    option_defaults: ClassVar[dict[str, Any]] = {"h": None, "w": None}

    def _check_params(self) -> None:
        _, H, W = _image_shape(self.kind, self.x_shape)
        if self.options["h"] is None or self.options["w"] is None:
            raise OperatorError(f"{self.kind}: options h and w (crop size) are required")
        h = self.options["h"] = _positive_int(self.kind, "h", self.options["h"])
        w = self.options["w"] = _positive_int(self.kind, "w", self.options["w"])
        if h > H or w > W:
            raise OperatorError(f"{self.kind}: crop {h}x{w} larger than the image {H}x{W}")

    def _y_shape(self):
        return (self.x_shape[0], self.options["h"], self.options["w"])

    def _window(self) -> tuple[int, int, int, int]:
        _, H, W = self.x_shape
        h, w = self.options["h"], self.options["w"]
        return (H - h) // 2, (W - w) // 2, h, w

    def _apply(self, x, p):
        t, l, h, w = self._window()
        return x[..., t:t + h, l:l + w]

    def _adjoint(self, y, p):
        _, H, W = self.x_shape
        t, l, h, w = self._window()
        return F.pad(y, (l, W - w - l, t, H - h - t))


@_register
class IdentityOperator(LinearOperator):
    """A = I (denoising): y = x + noise."""

    kind = "identity"

    def _apply(self, x, p):
        return x.clone()  # never alias the input: callers may add noise in place

    _adjoint = _apply


# ---------------------------------------------------------------------------------------------
# Factory and (de)serialisation
# ---------------------------------------------------------------------------------------------

def _kind_class(kind: Any) -> type[LinearOperator]:
    if kind not in OPERATORS:
        raise OperatorError(f"unknown operator kind {kind!r}; expected one of {sorted(OPERATORS)}")
    return OPERATORS[kind]


def make_operator(kind: str, n: int, x_shape: Any, noise_std: float, rng: np.random.Generator,
                  **options: Any) -> LinearOperator:
    """Draw random parameters of ``n`` observations of operator ``kind`` (see each class's ``draw``)."""
    cls = _kind_class(kind)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise OperatorError(f"make_operator: n must be a positive integer, got {n!r}")
    if not isinstance(rng, np.random.Generator):
        raise OperatorError(f"make_operator: rng must be a numpy.random.Generator, got {type(rng).__name__}")
    return cls.draw(int(n), _shape(x_shape), noise_std, rng, **options)


def _decode_attrs(attrs: Any) -> dict[str, Any]:
    if isinstance(attrs, (str, bytes)):
        try:
            attrs = json.loads(attrs)
        except json.JSONDecodeError as exc:
            raise OperatorError(f"operator attrs are not valid JSON ({exc})") from None
    if not isinstance(attrs, dict) or "kind" not in attrs:
        raise OperatorError(f"operator attrs must be a dict with a 'kind', got {type(attrs).__name__}")
    return attrs


def operator_from_arrays(params: dict[str, np.ndarray], attrs: dict[str, Any] | str) -> LinearOperator:
    """Rebuild an operator from :meth:`LinearOperator.params` and :meth:`LinearOperator.attrs`
    (``attrs`` may also be their JSON string, as stored in an HDF5 attribute)."""
    attrs = _decode_attrs(attrs)
    return _kind_class(attrs["kind"]).from_params({k: np.asarray(v) for k, v in params.items()}, attrs)


def save_operator_arrays(op: LinearOperator) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """(datasets, attrs) for an HDF5 file: write each dataset as ``op/<name>`` and attrs as the
    JSON attribute ``operator`` (see :mod:`emprior.data.observations`); :func:`load_operator_arrays`
    inverts it."""
    return op.params(), op.attrs()


def load_operator_arrays(datasets: dict[str, np.ndarray], attrs: dict[str, Any] | str,
                         prefix: str = "") -> LinearOperator:
    """Inverse of :func:`save_operator_arrays`; with ``prefix="op/"`` pick ``op/<name>`` datasets out
    of a whole file's datasets."""
    params = {k[len(prefix):]: v for k, v in datasets.items() if k.startswith(prefix)}
    return operator_from_arrays(params, attrs)


def measured_system(op: LinearOperator, i: int, y: Tensor, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """Observation i as a dense system on its measured coordinates: (A_i's rows (m_i, d), y_i (m_i,)).

    Columns are A_i e_j (d applications of the operator: for exact posteriors at small d). Unmeasured
    coordinates of y (masked pixels) are exact zeros with zero rows in A: dropping them leaves p(x | y)
    unchanged and keeps A C A^T + Sigma_y well conditioned.
    """
    op_i = op[i]
    d = math.prod(op.x_shape)
    basis = torch.eye(d, dtype=dtype).reshape(d, *op.x_shape)
    A = op_i.A(basis).reshape(d, -1).T
    y_i = y[i].reshape(-1).to(dtype)
    measured = op_i.measured(basis)
    if measured is not None:
        keep = torch.broadcast_to(measured, (1, *op.y_shape)).reshape(-1) > 0
        A, y_i = A[keep], y_i[keep]
    return A, y_i

"""``fourier_lines``: sub-sampled k-space lines of real images (accelerated MRI, Sec. 5.3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from emprior.operators.base import (LinearOperator, OperatorError, as_shape, bool_param, draw_option, fmt_shape,
                                    image_shape, register)


@dataclass(frozen=True)
class FourierLinesOptions:
    acceleration: float = draw_option(6.0, minimum=1, doc="R: a fraction 1/R of the k-space lines is kept on average")
    center_fraction: float | None = draw_option(None, minimum=0,
                                                doc="fraction of always-kept low frequencies (default 0.375 / R)")
    symmetric: bool = draw_option(False, doc="one draw per mirror pair k, -k (A^T A a projection)")
    rule: str = draw_option("official", enum=["official", "exact"],
                            doc="official: 2 ceil(cf W / 2) centre lines, p = (1/R - cf) / (1 - cf) (DiEM's "
                                "make_mask); exact: round(cf W) centre lines and p such that W/R lines are "
                                "kept on average")


@register("fourier_lines", FourierLinesOptions)
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

    Drawing (Jalal et al. 2021): the ``n_c`` lowest frequencies (signed k_x in [-n_c/2, n_c/2)) are
    always kept, every other line independently with probability p; centre fraction cf = 0.375 / R by
    default. ``rule="official"`` (default) is the official DiEM ``make_mask`` (experiments/fastmri/
    utils.py:61-78 at 09a7253): n_c = 2 ceil(cf W / 2) and p = (1/R - cf) / (1 - cf), at W = 320
    n_c = 2 ceil(60 / R) and p = 200 / (320 R - 120): 20 lines and p = 1/9 at R = 6, where W/R lines
    are kept on average; rounding n_c up keeps more at other R (W / E[lines] = 7.82 at R = 8, 15.6 at
    16, 31.2 at 32 for W = 320; 7.2, 14.5, 19.8 for W = 64). ``rule="exact"``: n_c = round(cf W) and
    p = (W/R - n_c) / (W - n_c), so that exactly a fraction 1/R of the lines is kept on average.
    """

    param_names = ("lines",)

    def _check_params(self) -> None:
        c, _, w = image_shape(self.kind, self.x_shape)
        if c != 1:
            raise OperatorError(f"{self.kind}: x_shape must be (1, H, W) (a real single-channel image), "
                                f"got {fmt_shape(self.x_shape)}")
        self._params["lines"] = bool_param(self.kind, "lines", self._params["lines"], (w,))

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
    def draw(cls, n, x_shape, noise_std, rng, opts: FourierLinesOptions):
        acceleration, center_fraction, symmetric = opts.acceleration, opts.center_fraction, opts.symmetric
        if opts.rule not in ("official", "exact"):
            raise OperatorError(f"{cls.kind}: option rule must be 'official' or 'exact', got {opts.rule!r}")
        x_shape = as_shape(x_shape)
        _, _, w = image_shape(cls.kind, x_shape)
        R = float(acceleration)
        if not (math.isfinite(R) and 1.0 <= R <= w):
            raise OperatorError(f"{cls.kind}: option acceleration must be in [1, W={w}], got {acceleration!r}")
        cf = 0.375 / R if center_fraction is None else float(center_fraction)
        if not 0.0 <= cf <= 1.0 / R:
            raise OperatorError(f"{cls.kind}: option center_fraction must be in [0, 1/acceleration="
                                f"{1.0 / R:.4g}], got {center_fraction!r}")
        freq = cls.signed_frequencies(w)
        if opts.rule == "official":
            n_c = min(2 * math.ceil(cf * w / 2 - 1e-9), w)
        else:
            n_c = min(round(cf * w), math.floor(w / R))
        if symmetric:
            half = (n_c - 1) // 2 if n_c > 0 else -1
            centre = np.abs(freq) <= half
        else:
            centre = (freq >= -(n_c // 2)) & (freq < n_c - n_c // 2)
        n_c = int(centre.sum())
        if opts.rule == "official" and not symmetric:  # symmetric masks (not official) keep W/R on average
            p = (1.0 / R - cf) / (1.0 - cf) if cf < 1.0 else 0.0
        else:
            p = (w / R - n_c) / (w - n_c) if w > n_c else 0.0
        if symmetric:
            # one coin per mirror pair {k, -k}: column k (native index) and (-k) mod w share a draw
            u = rng.random((n, w))
            rep = np.minimum(np.arange(w), (-np.arange(w)) % w)
            keep = u[:, rep] < p
        else:
            keep = rng.random((n, w)) < p
        lines = keep | centre[None, :]
        recorded = {"acceleration": R, "center_fraction": cf, "symmetric": bool(symmetric), "rule": opts.rule}
        return cls(x_shape, noise_std, {"lines": lines}, recorded)

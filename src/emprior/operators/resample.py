"""Resampling operators: ``downsample`` (separable antialiased bicubic, FFHQ x4 super-resolution,
Table 4) and ``crop`` (centred crop)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from emprior.core.registry import option
from emprior.operators.base import LinearOperator, OperatorError, image_shape, positive_int, register


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


@dataclass(frozen=True)
class DownsampleOptions:
    factor: int = option(4, minimum=1, doc="integer down-sampling factor f (H and W multiples of f)")


@register("downsample", DownsampleOptions)
class DownsampleOperator(LinearOperator):
    """A x = D_H x D_W^T per channel, D the separable antialiased bicubic matrices of
    :func:`bicubic_downsample_matrix`; y_shape (C, H / f, W / f); A^T y = D_H^T y D_W."""


    def _check_params(self) -> None:
        _, h, w = image_shape(self.kind, self.x_shape)
        f = self.options["factor"] = positive_int(self.kind, "factor", self.options["factor"])
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


@dataclass(frozen=True)
class CropOptions:
    h: int | None = option(None, minimum=1, doc="crop height (default: half the image's)")
    w: int | None = option(None, minimum=1, doc="crop width (default: half the image's)")


@register("crop", CropOptions)
class CropOperator(LinearOperator):
    """Centred crop to (h, w): top = (H - h) // 2, left = (W - w) // 2; A^T zero-pads back."""


    def _check_params(self) -> None:
        _, H, W = image_shape(self.kind, self.x_shape)
        for key, size in (("h", H), ("w", W)):
            if self.options[key] is None:
                self.options[key] = max(1, size // 2)
        h = self.options["h"] = positive_int(self.kind, "h", self.options["h"])
        w = self.options["w"] = positive_int(self.kind, "w", self.options["w"])
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

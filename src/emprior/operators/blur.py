"""``blur``: A x = k_i * x, a Gaussian or random camera-shake kernel (FFHQ motion deblur, Table 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from emprior.core.registry import option
from emprior.operators.base import (LinearOperator, OperatorError, draw_option, fmt_shape, image_shape, positive_int,
                                    register)


def _reflect_pad(x: torch.Tensor, c: int) -> torch.Tensor:
    """Mirror padding by c on the last two axes without repeating the edge (torch's "reflect")."""
    return F.pad(x, (c, c, c, c), mode="reflect") if c > 0 else x


def _fold(z: torch.Tensor, c: int, dim: int) -> torch.Tensor:
    """Adjoint of reflect padding by c along ``dim``: x[1..c] += flip(left), x[n-1-c..n-2] += flip(right)."""
    if c == 0:
        return z
    n = z.shape[dim] - 2 * c
    left, mid, right = z.narrow(dim, 0, c), z.narrow(dim, c, n).clone(), z.narrow(dim, c + n, c)
    mid.narrow(dim, 1, c).add_(left.flip(dim))
    mid.narrow(dim, n - 1 - c, c).add_(right.flip(dim))
    return mid


def _reflect_pad_adjoint(z: torch.Tensor, c: int) -> torch.Tensor:
    return _fold(_fold(z, c, -1), c, -2)


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


def dps_motion_kernel(size: int, intensity: float, seed: int) -> np.ndarray:
    """The camera-shake kernel of DPS's motion deblur: the algorithm of the ``motionblur`` package's
    ``Kernel(size=(K, K), intensity)`` (LeviBorodenko/motionblur@578137887b2067c532bd4e422ff5afdcabfccebf,
    motionblur.py: Kernel._createPath / _createKernel / kernelMatrix), which DPS imports in
    util/img_utils.py and guided_diffusion/measurements.py:89-112, written here. All draws come from
    ``numpy.random.RandomState(seed)`` in the reference's order, so the kernel equals
    ``np.random.seed(seed); Kernel(...).kernelMatrix``. Returned in DPS's orientation (DPS applies it
    as a cross-correlation, nn.Conv2d), float64, shape (size, size), summing to 1.

    On a canvas of side D = 2K (diagonal d = sqrt(2) D): a path length L = 0.75 d (U(0,1) + U(0, i^2));
    steps ~ Beta(1, 30) (1 - i + 0.1) d (each < L) until their sum reaches L; a first heading
    U(-a, a) with a ~ U(0, i pi), then headings ~ Triangular(0, i a, a + 0.1) whose sign flips with
    probability Beta(2, 20); the cumulative path is centred, rotated by U(0, pi), drawn as a PIL line of
    width int(d / 150), Gaussian-blurred with radius int(0.01 d), LANCZOS-resized to K x K, grey, normalised.
    """
    from PIL import Image, ImageDraw, ImageFilter  # only this kernel needs PIL

    size, intensity = int(size), float(intensity)
    if size < 3 or not 0.0 <= intensity <= 1.0:
        raise OperatorError(f"dps_motion_kernel: need size >= 3 and intensity in [0, 1], "
                            f"got size={size}, intensity={intensity}")
    big = 2 * size
    diag = (2 * big**2) ** 0.5
    if int(diag / 150) < 1:  # the reference draws a line of width 0 (nothing) and returns NaNs
        raise OperatorError(f"dps_motion_kernel: size {size} < 54 draws no path (line width int(2 sqrt(2) "
                            f"size / 150) = 0 in the reference); use size >= 54 or kernel='motion'")
    rs = np.random.RandomState(int(seed))
    eps = 0.1
    max_len = 0.75 * diag * (rs.uniform() + rs.uniform(0, intensity**2))
    steps: list[float] = []
    while sum(steps) < max_len:
        step = rs.beta(1, 30) * (1 - intensity + eps) * diag
        if step < max_len:
            steps.append(step)
    max_angle = rs.uniform(0, intensity * np.pi)
    jitter = rs.beta(2, 20)
    angles = [rs.uniform(low=-max_angle, high=max_angle)]
    while len(angles) < len(steps):
        a = rs.triangular(0, intensity * max_angle, max_angle + eps)
        a *= -np.sign(angles[-1]) if rs.uniform() < jitter else np.sign(angles[-1])
        angles.append(a)
    path = np.cumsum(np.asarray(steps) * np.exp(1j * np.asarray(angles)))
    path = (path - sum(path) / len(steps)) * np.exp(1j * rs.uniform(0, np.pi)) + (big + 1j * big) / 2
    img = Image.new("RGB", (big, big))
    ImageDraw.Draw(img).line(xy=[(z.real, z.imag) for z in path], width=int(diag / 150))
    img = img.filter(ImageFilter.GaussianBlur(radius=int(diag * 0.01))).resize((size, size), resample=Image.LANCZOS)
    k = np.asarray(img.convert("L"), dtype=np.float32)
    return (k / np.sum(k)).astype(np.float64)


@dataclass(frozen=True)
class BlurOptions:
    padding: Literal["zero", "circular", "reflect"] = option(
        "zero", doc="boundary: zeros outside the image, periodic, or mirrored without edge repeat (DPS)")
    kernel: Literal["motion", "gaussian", "dps_motion"] = draw_option(
        "motion", doc="random camera shake, fixed Gaussian, or DPS's motionblur-package kernel (Table 4 FFHQ)")
    size: int = draw_option(61, minimum=1, doc="odd kernel side K")
    intensity: float = draw_option(0.5, minimum=0, maximum=1, doc="motion kernel: curvature of the path")
    std: float = draw_option(3.0, exclusiveMinimum=0, doc="Gaussian kernel: standard deviation in pixels")
    shared: bool = draw_option(False, doc="motion kernel: one kernel for all observations")


@register("blur", BlurOptions)
class BlurOperator(LinearOperator):
    """A x = k_i * x (true 2-D convolution of every channel, kernel centred), "same" output size.

    ``padding="zero"``: y_ij = sum_ab k_ab x_{i+c-a, j+c-b} with x = 0 outside the image
    (c = (K - 1) / 2), computed exactly by an FFT of size (H + K - 1, W + K - 1); the adjoint pads
    y, correlates with k (conjugate spectrum) and crops. ``padding="circular"``: periodic
    boundaries, FFT of size (H, W). Both adjoints are exact up to rounding.
    Kernels: ``kernel="motion"`` draws one :func:`motion_kernel` per observation (``shared=True``:
    one for all); ``kernel="gaussian"`` is one deterministic :func:`gaussian_kernel` (len 1).
    """

    param_names = ("kernel",)

    def _check_params(self) -> None:
        _, h, w = image_shape(self.kind, self.x_shape)
        k = self._params["kernel"]
        if k.ndim != 3 or k.shape[1] != k.shape[2] or k.shape[1] % 2 == 0:
            raise OperatorError(f"{self.kind}: parameter 'kernel' must have shape (n, K, K) with K odd, "
                                f"got {fmt_shape(k.shape)}")
        if k.dtype.kind != "f" or not np.isfinite(k).all():
            raise OperatorError(f"{self.kind}: parameter 'kernel' must be finite floats")
        if self.options["padding"] not in ("zero", "circular", "reflect"):
            raise OperatorError(f"{self.kind}: option padding must be 'zero', 'circular' or 'reflect', "
                                f"got {self.options['padding']!r}")
        if self.options["padding"] == "reflect" and k.shape[1] // 2 >= min(h, w):
            raise OperatorError(f"{self.kind}: reflect padding needs K // 2 < min(H, W), got K={k.shape[1]} "
                                f"for {h}x{w}")
        if self.options["padding"] == "circular" and k.shape[1] > min(h, w):
            raise OperatorError(f"{self.kind}: circular padding needs K <= min(H, W), got K={k.shape[1]} "
                                f"for {h}x{w}")

    def _grid(self) -> tuple[int, int]:
        _, h, w = self.x_shape
        K = self._params["kernel"].shape[1]
        return (h + K - 1, w + K - 1) if self.options["padding"] != "circular" else (h, w)

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
        if self.options["padding"] == "reflect":
            # mirror-pad by c, circular convolution on the (H + 2c) grid: no wrap in the valid part
            full = torch.fft.irfft2(torch.fft.rfft2(_reflect_pad(x, c)) * p["kernel_fft"], s=L)
            return full[..., 2 * c:2 * c + h, 2 * c:2 * c + w]
        xp = F.pad(x, (0, L[1] - w, 0, L[0] - h))
        full = torch.fft.irfft2(torch.fft.rfft2(xp) * p["kernel_fft"], s=L)
        return full[..., c:c + h, c:c + w]

    def _adjoint(self, y, p):
        _, h, w = self.x_shape
        L = self._grid()
        if self.options["padding"] == "circular":
            return torch.fft.irfft2(torch.fft.rfft2(y) * p["kernel_fft"].conj(), s=L)
        c = self._params["kernel"].shape[1] // 2
        if self.options["padding"] == "reflect":
            yp = F.pad(y, (2 * c, 0, 2 * c, 0))
            full = torch.fft.irfft2(torch.fft.rfft2(yp) * p["kernel_fft"].conj(), s=L)
            return _reflect_pad_adjoint(full, c)
        yp = F.pad(y, (c, L[1] - w - c, c, L[0] - h - c))
        full = torch.fft.irfft2(torch.fft.rfft2(yp) * p["kernel_fft"].conj(), s=L)
        return full[..., :h, :w]

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, opts: BlurOptions):
        kernel, intensity, std, shared = opts.kernel, opts.intensity, opts.std, opts.shared
        size = positive_int(cls.kind, "size", opts.size)
        if size % 2 == 0:
            raise OperatorError(f"{cls.kind}: option size must be odd, got {size}")
        if kernel == "gaussian":
            kernels = gaussian_kernel(size, std)[None]
            drawn = {"kernel": "gaussian", "size": size, "std": float(std)}
        elif kernel == "motion":
            kernels = np.stack([motion_kernel(size, intensity, rng) for _ in range(1 if shared else n)])
            drawn = {"kernel": "motion", "size": size, "intensity": float(intensity), "shared": bool(shared)}
        elif kernel == "dps_motion":
            # one RandomState seed per kernel from the operator's generator; flipped because DPS
            # correlates (nn.Conv2d) where this operator convolves, so A is DPS's A
            seeds = rng.integers(0, 2**32, size=1 if shared else n)
            kernels = np.stack([dps_motion_kernel(size, intensity, int(sd))[::-1, ::-1] for sd in seeds])
            drawn = {"kernel": "dps_motion", "size": size, "intensity": float(intensity), "shared": bool(shared)}
        else:
            raise OperatorError(f"{cls.kind}: option kernel must be 'motion', 'gaussian' or 'dps_motion', "
                                f"got {kernel!r}")
        return cls(x_shape, noise_std, {"kernel": kernels}, {**drawn, "padding": opts.padding})

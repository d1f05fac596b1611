"""Inpainting masks A = diag(m), m in {0, 1}, shared by the channels (y has the shape of x).

``pixel_mask``: every pixel deleted independently (CIFAR-10, digits, FFHQ random inpainting; Sec. 5.2,
App. C); ``box_mask``: a randomly placed square hole (FFHQ box inpainting, Table 4). Both A are
orthogonal projections (A = A^T = A^2), so A^T y = m * y.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from emprior.core.registry import option
from emprior.operators.base import (LinearOperator, OperatorError, as_shape, bool_param, draw_option, fmt_shape,
                                    image_shape, positive_int, register)


@dataclass(frozen=True)
class PixelMaskOptions:
    deleted: float = draw_option(0.75, minimum=0, exclusiveMaximum=1,
                                 doc="probability rho that a pixel is deleted")


@register("pixel_mask", PixelMaskOptions)
class PixelMaskOperator(LinearOperator):
    """A = diag(m) with m in {0, 1}^{H x W} shared by the C channels; y has the shape of x.

    Each pixel is deleted independently with probability ``deleted`` (rho): P(m_ij = 0) = rho.
    A is an orthogonal projection (A = A^T = A^2), so A^T y = m * y.
    """

    param_names = ("mask",)

    def _check_params(self) -> None:
        _, h, w = image_shape(self.kind, self.x_shape)
        self._params["mask"] = bool_param(self.kind, "mask", self._params["mask"], (h, w))

    def _apply(self, x: Tensor, p: dict[str, Tensor]) -> Tensor:
        return x * p["mask"].unsqueeze(1)

    _adjoint = _apply

    def _measured(self, p: dict[str, Tensor]) -> Tensor:
        return p["mask"].unsqueeze(1)

    @classmethod
    def draw(cls, n, x_shape, noise_std, rng, opts: PixelMaskOptions):
        deleted = opts.deleted
        _, h, w = image_shape(cls.kind, as_shape(x_shape))
        if not 0.0 <= float(deleted) < 1.0:
            raise OperatorError(f"{cls.kind}: option deleted must be in [0, 1), got {deleted!r}")
        mask = rng.random((n, h, w)) >= float(deleted)
        return cls(x_shape, noise_std, {"mask": mask}, {"deleted": float(deleted)})


@dataclass(frozen=True)
class BoxMaskOptions:
    box: int | None = option(None, minimum=1, doc="side of the square hole (default: min(H, W) // 2)")
    margin: int = draw_option(0, minimum=0, doc="distance of the hole from the image border")


@register("box_mask", BoxMaskOptions)
class BoxMaskOperator(LinearOperator):
    """A = diag(m) with m = 0 on a box x box square, shared by the channels; y has the shape of x.

    The top-left corner (t, l) is uniform on [margin, H - margin - box] x [margin, W - margin - box]
    (DPS's box inpainting draws it with margin 16 on 256 x 256 images; the default margin is 0).
    """

    param_names = ("corner",)

    def _check_params(self) -> None:
        _, h, w = image_shape(self.kind, self.x_shape)
        box = self.options["box"]
        box = min(h, w) // 2 if box is None else positive_int(self.kind, "box", box)
        if box > min(h, w):
            raise OperatorError(f"{self.kind}: box {box} does not fit in an image of size {h}x{w}")
        self.options["box"] = box
        corner = self._params["corner"]
        if corner.shape[1:] != (2,) or corner.dtype.kind not in "iu":
            raise OperatorError(f"{self.kind}: parameter 'corner' must be integers of shape (n, 2), "
                                f"got {corner.dtype} {fmt_shape(corner.shape)}")
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
    def draw(cls, n, x_shape, noise_std, rng, opts: BoxMaskOptions):
        box, margin = opts.box, opts.margin
        _, h, w = image_shape(cls.kind, as_shape(x_shape))
        box = min(h, w) // 2 if box is None else positive_int(cls.kind, "box", box)
        margin = int(margin)
        if margin < 0 or box + 2 * margin > min(h, w):
            raise OperatorError(f"{cls.kind}: box {box} with margin {margin} does not fit in {h}x{w}")
        top = rng.integers(margin, h - margin - box, size=n, endpoint=True)
        left = rng.integers(margin, w - margin - box, size=n, endpoint=True)
        corner = np.stack([top, left], axis=1).astype(np.int64)
        return cls(x_shape, noise_std, {"corner": corner}, {"box": box, "margin": margin})

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

One module per family (:mod:`~emprior.operators.masks`, ``projection``, ``fourier``, ``blur``,
``resample``, ``identity``); the protocol and registry :data:`OPERATORS` are in
:mod:`~emprior.operators.base`, the factory and (de)serialisation in :mod:`~emprior.operators.io`.
"""

from emprior.core.registry import import_submodules
from emprior.operators.base import OPERATORS, LinearOperator, OperatorError
from emprior.operators.blur import BlurOperator, gaussian_kernel, motion_kernel
from emprior.operators.fourier import FourierLinesOperator
from emprior.operators.identity import IdentityOperator
from emprior.operators.io import (load_operator_arrays, make_operator, measured_system, operator_from_arrays,
                                  save_operator_arrays)
from emprior.operators.masks import BoxMaskOperator, PixelMaskOperator
from emprior.operators.projection import ProjectionOperator
from emprior.operators.resample import CropOperator, DownsampleOperator, bicubic_downsample_matrix

import_submodules(__name__, __path__)  # a new plug-in file registers itself

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
    "measured_system",
    "motion_kernel",
    "operator_from_arrays",
    "save_operator_arrays",
]

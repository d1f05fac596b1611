"""Clean data sets x ~ p(x) (one module per data set), the observations y = A x + e, and their HDF5 files.

Every loader returns a float32 array of shape (N, *event_shape) in the value range the reference
code trains on:

==========  ========================  ============  ====================================================
name        shape                     range         source
==========  ========================  ============  ====================================================
manifold    (n, dim)                  standardised  :class:`emprior.data.randman.RandomManifold` (Sec. 5.1)
digits      (1797, 1, 8, 8)           [-2, 2]       scikit-learn 8x8 digits (ships with the package)
cifar10     (50000|10000, 3, 32, 32)  [-2, 2]       CIFAR-10 python version (Sec. 5.2, official DiEM range)
ffhq        (n, 3, size, size)        [-1, 1]       folder of FFHQ PNGs (DPS model range, Table 4)
fastmri     (N, 1, 320, 320)          [-2, 2]       fastMRI single-coil knee .h5 (Sec. 5.3)
==========  ========================  ============  ====================================================

Each data set registers itself in :data:`DATASETS` with an options dataclass declaring its config
keys (:mod:`emprior.data.base`). Only CIFAR-10 can be fetched (:mod:`emprior.data.download`; a public
URL with a published md5); FFHQ and fastMRI require accepting a licence, so their loaders say where to
get them. Every failure is a one-line :class:`~emprior.core.errors.DataError` naming the file and what
was expected.
"""

from emprior.core.registry import import_submodules
from emprior.data.base import DATASETS, dataset_shape, load_dataset, prepare_dataset

import_submodules(__name__, __path__)  # a new plug-in file registers itself

__all__ = ["DATASETS", "dataset_shape", "load_dataset", "prepare_dataset"]

"""EM methods (Algorithm 1) as plug-ins: each declares its stages and owns q_0, the E-step and the
M-step. Every module of this package is imported here, so a new method is one file (plus config)."""

from emprior.core.registry import import_submodules
from emprior.methods.base import EM_METHODS, STAGES, EMMethod, make_method

import_submodules(__name__, __path__)  # a new plug-in file registers itself

__all__ = ["EM_METHODS", "STAGES", "EMMethod", "make_method"]

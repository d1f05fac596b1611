"""EM methods (Algorithm 1) as plug-ins: each declares its stages and owns q_0, the E-step and the
M-step. Every module of this package is imported here, so a new method is one file (plus config)."""

import importlib
import pkgutil

from emprior.methods.base import EM_METHODS, STAGES, EMMethod, make_method, stages_of

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")

__all__ = ["EM_METHODS", "STAGES", "EMMethod", "make_method", "stages_of"]

"""Batched Krylov solvers (CG, GMRES) for the MMPS linear systems (Eq. 22-23)."""

from emprior.linalg.batched import SolveInfo, batch_dot
from emprior.linalg.cg import cg
from emprior.linalg.gmres import gmres

__all__ = ["SolveInfo", "batch_dot", "cg", "gmres"]

"""Batched Krylov solvers (CG, GMRES) for the MMPS linear systems (Eq. 22-23)."""
